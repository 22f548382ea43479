"""Render a run summary for people: one latency table and a few key lines per scenario."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

__all__ = ["render_summary"]

_LATENCY_ROWS = (
    ("TTFT", "latency_ms", "ttft"),
    ("ITL (every gap)", "latency_ms", "itl"),
    ("TPOT", "latency_ms", "tpot"),
    ("E2E", "latency_ms", "e2e"),
    ("native prefill", "native_ms", "prefill"),
    ("native decode", "native_ms", "decode"),
)


def _f(value: float | None, fmt: str = "{:.1f}") -> str:
    return "—" if value is None else fmt.format(value)


def _p50(stats: dict[str, Any] | None) -> float | None:
    return None if stats is None else stats["p50"]


def _scenario(name: str, s: dict[str, Any]) -> Group:
    req = s["requests"]
    rate = req["success_rate"]
    head = Text.assemble(
        (name, "bold"),
        f" — {req['ok']} ok / {req['steady']} steady",
        f" ({_f(rate * 100 if rate is not None else None)} % success), {req['warmup']} warmup",
    )
    table = Table(box=None, pad_edge=False)
    table.add_column("ms")
    for col in ("n", "p50", "p95", "p99", "max", "mean"):
        table.add_column(col, justify="right")
    for label, group, key in _LATENCY_ROWS:
        st = s[group][key]
        if st is None:
            table.add_row(label, "0", *["—"] * 5)
            continue
        table.add_row(label, str(st["n"]), *(_f(st[k]) for k in ("p50", "p95", "p99", "max", "mean")))
    tp, tok, warm = s["throughput"], s["tokens"], s["warmup"]
    prompt_mean = (tok["prompt"] or {}).get("mean")
    output_mean = (tok["output"] or {}).get("mean")
    lines = [
        f"throughput      {_f(tp['output_tok_s'])} output tok/s, {_f(tp['requests_per_s'], '{:.2f}')} req/s "
        f"over {_f(tp['window_s'])} s",
        f"tok/s per req   native p50 {_f(_p50(tp['native_tok_s_per_request']))}, "
        f"wall p50 {_f(_p50(tp['wall_tok_s_per_request']))}",
        f"HTTP overhead   p50 {_f(_p50(s['overhead_pct']))} %   decode fraction p50 "
        f"{_f(_p50(s['decode_fraction']), '{:.3f}')}",
        f"warmup ratio    {_f(warm['ratio'], '{:.2f}')}"
        + ("  (> 10: use a warm pool)" if warm["needs_warm_pool"] else ""),
        f"prompt tokens   mean {_f(prompt_mean)} (target {tok['prompt_target'] or '—'})",
        f"output tokens   mean {_f(output_mean)} (target {tok['output_target'] or '—'}), "
        f"early stops {tok['early_stop']}",
    ]
    cold = s["cold_start"]
    if cold["n"]:
        lines.append(
            f"cold starts     {cold['n']} (kept out of the table), load p50 {_f(_p50(cold['load_ms']))} ms, "
            f"E2E p50 {_f(_p50(cold['e2e_ms']))} ms"
        )
    if tok["server_vs_chunk_mismatch"]:
        lines.append(f"token counts    {tok['server_vs_chunk_mismatch']} records where server count ≠ chunks")
    if req["degraded_by_reason"]:
        reasons = ", ".join(f"{k} × {v}" for k, v in req["degraded_by_reason"].items())
        lines.append(f"degraded        {reasons}")
    return Group(head, table, Text("\n".join(lines)))


def render_summary(summary: dict[str, Any]) -> Group:
    """Every scenario in the summary, in order."""
    return Group(*(_scenario(name, s) for name, s in summary["scenarios"].items()))
