"""A run's summary on the console: one latency table and a few key lines per scenario; a sweep's curve."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from agent.core.figures import LATENCY_TABLE
from analysis.render.text import fmt
from analysis.results import (
    Distribution,
    EnergySummary,
    LengthCheck,
    LoadFidelity,
    RunSummary,
    ScenarioSummary,
    ServerGauge,
    ServerSummary,
    SweepCurve,
    SweepServer,
)

__all__ = ["energy_line", "render_summary", "render_sweep", "server_lines"]


def _latency_table(s: ScenarioSummary) -> Table:
    table = Table(box=None, pad_edge=False)
    table.add_column("ms")
    for col in ("n", "p50", "p95", "p99", "max", "mean"):
        table.add_column(col, justify="right")
    for fig in LATENCY_TABLE:  # each row where the summary keeps it: "latency_ms.ttft"
        group, _, key = (fig.summary or "").partition(".")
        st = getattr(s, group).get(key)
        if st is None:
            table.add_row(fig.label, "0", *["—"] * 5)
            continue
        table.add_row(
            fig.label, str(st.n), *(fmt(getattr(st, k)) for k in ("p50", "p95", "p99", "max", "mean"))
        )
    return table


def _key_lines(s: ScenarioSummary) -> list[str]:
    tp, tok, warm = s.throughput, s.tokens, s.warmup
    lines = [
        f"throughput      {fmt(tp.output_tok_s)} output tok/s, "
        f"{fmt(tp.requests_per_s, '{:.2f}')} req/s over {fmt(tp.window_s)} s",
        f"tok/s per req   native p50 {fmt(_p50(tp.native_tok_s_per_request))}, "
        f"wall p50 {fmt(_p50(tp.wall_tok_s_per_request))}",
        f"overhead        p50 {fmt(_p50(s.overhead_pct))} % outside native decode   decode fraction p50 "
        f"{fmt(_p50(s.decode_fraction), '{:.3f}')}",
        f"warmup ratio    {fmt(warm.ratio, '{:.2f}')}"
        + ("  (> 10: use a warm pool)" if warm.needs_warm_pool else ""),
        f"prompt tokens   mean {fmt(_mean(tok.prompt))} (target {tok.prompt_target or '—'})",
        f"output tokens   mean {fmt(_mean(tok.output))} (target {tok.output_target or '—'}), "
        f"early stops {tok.early_stop}",
    ]
    if tp.prompt_tok_s and tok.output_target in (0, 1):
        lines.append(f"prefill         {fmt(tp.prompt_tok_s)} prompt tok/s")
    return lines + _condition_lines(s)


def _condition_lines(s: ScenarioSummary) -> list[str]:
    """Goodput, arrivals, cold starts, token-count mismatches and degraded reasons, where there are any."""
    lines = []
    good = s.goodput
    if good:
        slo = ", ".join(f"{k.removesuffix('_ms')} ≤ {v:g} ms" for k, v in good.slo.items())
        lines.append(
            f"goodput         {fmt(good.share * 100)} % of {good.of} requests meet {slo} "
            f"({fmt(good.requests_per_s, '{:.2f}')} req/s)"
        )
    if s.load:
        lines.append(_load_line(s.load))
    cold = s.cold_start
    if cold.n:
        lines.append(
            f"cold starts     {cold.n} (kept out of the table), load p50 {fmt(_p50(cold.load_ms))} ms, "
            f"E2E p50 {fmt(_p50(cold.e2e_ms))} ms"
        )
    if s.tokens.server_vs_chunk_mismatch:
        lines.append(
            f"token counts    {s.tokens.server_vs_chunk_mismatch} records where server count ≠ chunks"
        )
    lines += _workload_lines(s)
    if s.requests.degraded_by_reason:
        reasons = ", ".join(f"{k} × {v}" for k, v in s.requests.degraded_by_reason.items())
        lines.append(f"degraded        {reasons}")
    return lines


def _length_line(label: str, check: LengthCheck | None) -> list[str]:
    if check is None:
        return []
    got = check.measured
    asked = (
        f"requested p50 {fmt(check.requested.p50)} [{fmt(check.requested_min)}–{fmt(check.requested.max)}]"
    )
    seen = f"measured p50 {fmt(_p50(got))} [{fmt(check.measured_min)}–{fmt(got.max if got else None)}]"
    template = f", template {fmt(check.template.mean)} tokens apart" if check.template else ""
    return [f"{label} {asked}, {seen}, exact {check.exact}/{check.n}{template}"]


def _workload_lines(s: ScenarioSummary) -> list[str]:
    """Requested against measured lengths, the prefix cache, conversations by turn, per-model medians."""
    lines: list[str] = []
    if s.workload is not None:
        lines += _length_line("prompt length  ", s.workload.prompt) + _length_line(
            "output length  ", s.workload.output
        )
    cache = s.prefix_cache
    if cache is not None:
        lines.append(
            f"prefix cache    {cache.hits}/{cache.requests} requests hit ({fmt(cache.hit_rate * 100)} %), "
            f"{fmt((cache.token_hit_rate or 0) * 100)} % of prompt tokens cached; TTFT p50 hit "
            f"{fmt(_p50(cache.ttft_hit_ms))} ms, miss {fmt(_p50(cache.ttft_miss_ms))} ms"
        )
    talk = s.conversations
    if talk is not None:
        turns = ", ".join(f"{t.key}: {fmt(_p50(t.ttft_ms))}" for t in talk.by_turn[:8])
        lines.append(
            f"conversations   {talk.conversations} ({talk.turns} turns); TTFT p50 by turn {turns} ms"
        )
    for model, sub in (s.by_model or {}).items():
        lines.append(
            f"model {model}: {sub.requests.ok} ok, TTFT p50 {fmt(_p50(sub.latency_ms.get('ttft')))} ms, "
            f"E2E p50 {fmt(_p50(sub.latency_ms.get('e2e')))} ms"
        )
    return lines


def _scenario(name: str, s: ScenarioSummary) -> Group:
    req = s.requests
    rate = req.success_rate
    head = Text.assemble(
        (name, "bold"),
        f" — {req.ok} ok / {req.steady} steady",
        f" ({fmt(rate * 100 if rate is not None else None)} % success), {req.warmup} warmup",
    )
    return Group(head, _latency_table(s), Text("\n".join(_key_lines(s))))


def _p50(stats: Distribution | None) -> float | None:
    return None if stats is None else stats.p50


def _mean(stats: Distribution | None) -> float | None:
    return None if stats is None else stats.mean


def _load_line(load: LoadFidelity) -> str:
    lag = load.schedule_lag_ms
    text = (
        f"arrivals        {load.arrival}: requested {fmt(load.rate_requested, '{:.2f}')} req/s, scheduled "
        f"{fmt(load.rate_scheduled, '{:.2f}')}, achieved {fmt(load.rate_achieved, '{:.2f}')} "
        f"({fmt(load.rate_error_vs_schedule_pct, '{:+.2f}')} % vs schedule)\n"
        f"                schedule lag p50 {fmt(lag.p50 if lag else None, '{:.2f}')} / "
        f"p99 {fmt(lag.p99 if lag else None, '{:.2f}')} ms"
    )
    if load.burstiness_measured is not None and load.arrival != "constant":
        text += f", burstiness {fmt(load.burstiness_measured, '{:.2f}')}"
        if load.burstiness_requested is not None:
            text += f" (asked {load.burstiness_requested:g})"
    if load.trustworthy is False:
        cap = load.max_concurrency
        why = (
            f"the in-flight cap (max_concurrency {cap}) held requests back: the server could not keep up"
            if cap
            else "the client fell behind its schedule"
        )
        text += f"\n                NOT TRUSTWORTHY: lag p99 above {load.lag_limit_ms:g} ms — {why}"
    return text


def render_summary(summary: RunSummary) -> Group:
    """Every scenario in the summary, in order, then the run's energy line."""
    parts: list[Any] = [_scenario(name, s) for name, s in summary.scenarios.items()]
    energy = summary.energy
    if energy is not None:
        parts.append(Text(energy_line(energy)))
    if summary.server is not None:
        parts.append(Text("\n".join(server_lines(summary.server))))
    return Group(*parts)


def _peak(block: ServerGauge | None, scale: float = 1.0, unit: str = "") -> str:
    if block is None:
        return "—"
    return f"mean {fmt(block.mean * scale)}{unit} peak {fmt(block.peak * scale)}{unit}"


def server_lines(server: ServerSummary) -> list[str]:
    """The server's own view of each stage: queue, KV cache, preemptions, prefix hits, its TTFT."""
    if not server.scraped:
        return [f"server          {server.status}"]
    lines = []
    for st in server.stages:
        ratio = st.prefix_hit_ratio
        line = (
            f"server          {st.stage} ({st.engine or 'unknown engine'}): running "
            f"{_peak(st.running)}, waiting {_peak(st.waiting)}, KV cache "
            f"{_peak(st.kv_usage, 100, ' %')}, preemptions {fmt(st.preemptions, '{:g}')}, "
            f"prefix hits {fmt(ratio * 100 if ratio is not None else None, '{:.1f}')} %"
        )
        if st.ttft_server_mean_ms is not None:
            line += (
                f"\n                TTFT mean: server {fmt(st.ttft_server_mean_ms)} ms, wall "
                f"{fmt(st.ttft_wall_mean_ms)} ms, client and network "
                f"{fmt(st.ttft_client_and_network_ms)} ms"
            )
        lines.append(line)
    if not server.stages:
        lines.append("server          scraped, but no stage window was kept")
    lines += [f"WARNING         {flag}" for flag in server.flags]
    return lines


def energy_line(energy: EnergySummary) -> str:
    """One line: J/token and kWh per 1M tokens from macro windows, and request-window coverage."""
    if energy.requests is None:
        return f"energy          {energy.status}"
    bits = []
    for st in energy.stages:
        if st.j_per_token is None or st.kwh_per_1m_tokens is None:
            bits.append(f"{st.stage}: {st.quality} (no J/token)")
        else:
            bits.append(f"{st.stage}: {st.j_per_token:.3f} J/token, {st.kwh_per_1m_tokens:.3f} kWh/1M tokens")
    share = energy.requests.no_data_share
    seen = "" if share is None else f"; request windows without data {share * 100:.0f} %"
    return "energy          " + "; ".join(bits) + seen


def render_sweep(curve: SweepCurve, over: str, percentile: float) -> Table:
    """The sweep's stages as a table, the knee marked and the saturation said in the caption."""
    table = Table(title="throughput / latency by stage", box=None)
    for col in (
        over,
        "throughput",
        "req/s",
        "TTFT p50",
        f"TTFT p{percentile:g}",
        "TPOT p50",
        f"E2E p{percentile:g}",
        "goodput",
        "lag p99",
    ):
        table.add_column(col, justify="right")
    served = any(p.server for p in curve.points)
    if served:  # the server's own view of each stage, from its scraped metrics
        for col in ("server queue peak", "KV peak", "preempted"):
            table.add_column(col, justify="right")
    knee = curve.knee.stage if curve.knee is not None else None
    for p in curve.points:
        mark = " ◀ knee" if p.stage == knee else ""
        srv = p.server or SweepServer()
        kv = srv.kv_usage_peak
        extra = (
            [
                fmt(srv.waiting_peak, "{:g}"),
                fmt(kv * 100 if kv is not None else None, "{:.1f} %"),
                fmt(srv.preemptions, "{:g}"),
            ]
            if served
            else []
        )
        table.add_row(
            f"{p.load:g}{mark}",
            f"{fmt(p.throughput)} {p.throughput_unit}",
            fmt(p.requests_per_s, "{:.2f}"),
            fmt(p.ttft_ms_p50),
            fmt(p.ttft_ms_pslo),
            fmt(p.tpot_ms_p50),
            fmt(p.e2e_ms_pslo),
            fmt(p.goodput_share * 100 if p.goodput_share is not None else None, "{:.0f} %"),
            fmt(p.lag_ms_p99, "{:.2f}"),
            *extra,
        )
    sat = curve.saturated
    caption = f"knee at {over} {curve.knee.load:g}" if curve.knee else "no knee: first stage saturated"
    caption += f"; saturated at {sat.stage}: {sat.why}" if sat else "; not saturated within the stages run"
    if sat and sat.server:
        caption += f"; the server says: {sat.server}"
    table.caption = caption
    return table
