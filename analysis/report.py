"""Render an analysis for people: ``report.md`` with PNG figures, and a console table of verdicts.

Figures (matplotlib, Agg backend, written beside the report): latency CDFs per scenario, the ITL
distribution, throughput against offered load for sweeps, and quality deltas with their CIs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Group
from rich.table import Table
from rich.text import Text

from analysis.analyze import metric_values
from analysis.console import fmt, p50
from analysis.runs import Run

__all__ = ["console_view", "render_markdown", "write_figures"]


def _f(value: float | None, spec: str = "{:.2f}") -> str:
    return fmt(value, spec)  # the report's figures carry two decimals unless told otherwise


def _share(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.0f} %"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:+.1f} %"


# --- figures -------------------------------------------------------------------------------------------


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _cdf(ax: Any, values: Sequence[float], label: str) -> None:
    xs = np.sort(np.asarray(values))
    ys = np.arange(1, xs.size + 1) / xs.size
    ax.step(xs, ys, where="post", label=f"{label} (n={xs.size})")


def _save(fig: Any, out: Path, name: str, written: list[str]) -> None:
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    written.append(name)
    _plt().close(fig)


def write_figures(runs: list[Run], result: dict[str, Any], out: Path) -> list[str]:
    """Write every figure the data supports into ``out``; return the file names in report order."""
    plt = _plt()
    written: list[str] = []
    scenarios = list(dict.fromkeys(sc for run in runs for sc in run.by_scenario))
    for sc in scenarios:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        drawn = False
        for ax, metric, title in ((axes[0], "ttft_ms", "TTFT"), (axes[1], "e2e_ms", "E2E")):
            for run in runs:
                values = metric_values(run.by_scenario.get(sc, []), metric)
                if values:
                    _cdf(ax, values, run.label)
                    drawn = True
            ax.set_xlabel(f"{title} (ms)")
            ax.set_ylabel("share of requests")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(f"{sc}: latency CDF (ok steady requests)")
        if drawn:
            _save(fig, out, f"latency_cdf_{sc}.png", written)
        else:
            plt.close(fig)

        gaps = {
            run.label: np.concatenate(
                [
                    r.itl_ms
                    for r in run.by_scenario.get(sc, [])
                    if r.status == "ok" and r.stage == "steady" and r.itl_ms
                ]
                or [[]]
            )
            for run in runs
        }
        gaps = {k: v for k, v in gaps.items() if v.size}
        if gaps:
            fig, ax = plt.subplots(figsize=(6, 3.6))
            hi = max(float(np.percentile(v, 99.5)) for v in gaps.values())
            bins = np.linspace(0, hi if hi > 0 else 1, 60)
            for label, v in gaps.items():
                ax.hist(v, bins=bins, histtype="step", density=True, label=f"{label} (n={v.size})")
            ax.set_xlabel("inter-token gap (ms), every gap, clipped at p99.5")
            ax.set_ylabel("density")
            ax.set_title(f"{sc}: ITL distribution")
            ax.legend(fontsize=7)
            _save(fig, out, f"itl_{sc}.png", written)

    for run in runs:
        sweep = (run.summary or {}).get("sweep")
        points = (sweep or {}).get("points") or []
        if len(points) < 2:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.6))
        xs = [p["load"] for p in points]
        ax.plot(xs, [p["throughput"] for p in points], marker="o")
        knee = sweep.get("knee") if sweep else None
        if knee:
            ax.axvline(knee["load"], linestyle="--", color="grey", label=f"knee ({knee['stage']})")
            ax.legend(fontsize=7)
        ax.set_xlabel("offered load")
        ax.set_ylabel(points[0].get("throughput_unit", "throughput"))
        ax.set_title(f"{run.label}: throughput vs load")
        ax.grid(alpha=0.3)
        _save(fig, out, f"sweep_{run.label}.png", written)

    quality = result.get("quality") or {}
    for label, d in (quality.get("drift") or {}).items():
        rows = [
            (f"{task}/{name}", s["delta"])
            for task, t in d["tasks"].items()
            for name, s in t["scorers"].items()
            if s.get("delta")
        ]
        if not rows:
            continue
        fig, ax = plt.subplots(figsize=(7, 0.28 * len(rows) + 1.2))
        ys = np.arange(len(rows))
        est = np.array([r[1]["estimate"] for r in rows])
        err = np.array(
            [[r[1]["estimate"] - r[1]["low"] for r in rows], [r[1]["high"] - r[1]["estimate"] for r in rows]]
        )
        ax.errorbar(est, ys, xerr=err, fmt="o", capsize=3)
        ax.axvline(0, color="grey", linewidth=0.8)
        ax.set_yticks(ys, [r[0] for r in rows], fontsize=7)
        ax.set_xlabel("candidate − baseline (score, 95 % CI)")
        ax.set_title(f"{label}: quality deltas against {result.get('baseline')}")
        _save(fig, out, f"quality_deltas_{label}.png", written)
    return written


# --- markdown ------------------------------------------------------------------------------------------


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return [*lines, ""]


def _ci(block: dict[str, Any] | None, fmt: str = "{:.1f}") -> str:
    if not block:
        return "—"
    return f"{fmt.format(block['estimate'])} [{fmt.format(block['low'])}, {fmt.format(block['high'])}]"


def render_markdown(result: dict[str, Any], figures: Sequence[str]) -> str:
    """The whole report as Markdown."""
    out: list[str] = ["# infermeter analysis", ""]
    opts = result["options"]
    out.append(
        f"α = {opts['alpha']}, bootstrap {opts['resamples']:,} resamples (seed {opts['seed']}); "
        f"created {result['created_at']}."
    )
    out.append("")
    out.append("## Runs")
    out += _table(
        ["run", "role", "backend", "model", "scenarios", "records (ok)", "config sha256"],
        [
            [
                r["label"],
                "baseline" if r["label"] == result["baseline"] else "candidate",
                ", ".join(r["backends"]),
                ", ".join(r["models"]),
                ", ".join(r["scenarios"]),
                f"{r['records']} ({r['ok']})",
                (r["config_sha256"] or "—")[:12],
            ]
            for r in result["runs"]
        ],
    )
    warnings = [w for r in result["runs"] for w in r["warnings"]]
    if warnings:
        out += ["Warnings:", *[f"- {w}" for w in warnings], ""]

    for label, comp in result["comparisons"].items():
        counts = result["verdicts"][label]
        out.append(f"## Performance: {label} vs {result['baseline']}")
        out.append(
            f"{counts['worse']} worse, {counts['better']} better, {counts['no detectable change']} without a "
            f"detectable change (Mann–Whitney U, Holm-adjusted across all {sum(counts.values())} metrics)."
        )
        out.append("")
        for sc, rows in comp["scenarios"].items():
            out.append(f"### {sc}")
            out += _table(
                [
                    "metric",
                    "baseline p50",
                    "candidate p50",
                    "change",
                    "Δ p50 95 % CI",
                    "p (adj.)",
                    "d",
                    "MDE",
                    "verdict",
                ],
                [
                    [
                        c["metric"],
                        _f(c["median_baseline"]),
                        _f(c["median_candidate"]),
                        _pct(c["change_pct"]),
                        _ci(c["diff_ci"], "{:.2f}"),
                        _f(c["p_adjusted"], "{:.3g}"),
                        f"{_f(c['cohens_d'])} {c['effect'] or ''}".strip(),
                        _f(c["mde_abs"]),
                        f"**{c['verdict']}**" if c["verdict"] in ("better", "worse") else c["verdict"],
                    ]
                    for c in rows
                ],
            )
        ratios = comp.get("geomean_ratio") or {}
        if ratios:
            out.append("Geometric mean of candidate/baseline median ratios across scenarios:")
            out += _table(
                ["metric", "scenarios", "ratio"],
                [[m, str(r["scenarios"]), f"{r['geomean_ratio']:.3f}"] for m, r in ratios.items()],
            )

    out.append("## Performance per run")
    for label, perf in result["performance"].items():
        for sc, p in perf.items():
            req = p["requests"] or {}
            out.append(f"### {label} / {sc}")
            out.append(
                f"{req.get('ok', 0)} ok of {req.get('steady', 0)} steady requests; success rate "
                f"{_f((req.get('success_rate') or 0) * 100, '{:.1f}')} %."
            )
            out.append("")
            out += _table(
                ["metric", "n", "p50 [95 % CI]", "p95", "p99", "max"],
                [
                    [
                        m,
                        str(v["distribution"]["n"]),
                        _ci(v["median_ci"], "{:.2f}"),
                        _f(v["distribution"]["p95"]),
                        _f(v["distribution"]["p99"]),
                        _f(v["distribution"]["max"]),
                    ]
                    for m, v in p["metrics"].items()
                ],
            )
            warm, cold, tp = p["warmup"] or {}, p["cold_start"], p["throughput"] or {}
            lines = [
                f"- throughput: {_f(tp.get('output_tok_s'), '{:.1f}')} output tok/s, "
                f"{_f(tp.get('requests_per_s'), '{:.3f}')} req/s",
                f"- warmup ratio: {_f(warm.get('ratio'))}"
                + (" — above 10, use a warm pool" if warm.get("needs_warm_pool") else ""),
                f"- cold starts: {cold['n']} (TTFT p50 {_f(cold['ttft_p50_ms'], '{:.1f}')} ms, "
                f"{_f(cold['ttft_p50_delta_ms'], '{:+.1f}')} ms over steady)",
                f"- decode fraction p50: {_f(p50(p['decode_fraction']), '{:.3f}')}; "
                f"overhead outside native decode p50: {_f(p50(p['overhead_pct']), '{:.1f}')} %",
            ]
            good = p.get("goodput")
            if good:
                lines.append(f"- goodput: {good['share'] * 100:.1f} % of steady requests met {good['slo']}")
            for name, fit in (p.get("scaling") or {}).items():
                verdict = "actionable" if fit["actionable"] else "not actionable (R² < 0.2 or CI spans 0)"
                lines.append(
                    f"- fit {name}: slope {fit['slope']:.3f} "
                    f"[{fit['slope_ci'][0]:.3f}, {fit['slope_ci'][1]:.3f}], "
                    f"R² {fit['r2']:.2f}, n {fit['n']} — {verdict}"
                )
            out += [*lines, ""]
    if result["anova"]:  # once, after every run's section
        out.append("One-way ANOVA across all runs (per scenario and metric):")
        out += _table(
            ["scenario", "metric", "F", "p"],
            [
                [sc, m, f"{a['f']:.2f}", f"{a['p']:.3g}"]
                for sc, rows in result["anova"].items()
                for m, a in rows.items()
            ],
        )

    out += _quality_md(result.get("quality"))

    if result["cost"]:
        out.append("## Cost and capacity")
        rows = []
        for label, per in result["cost"].items():
            for sc, c in per.items():
                cap = c.get("capacity") or {}
                rows.append(
                    [
                        label,
                        sc,
                        _f(c["output_tok_s"], "{:.1f}"),
                        _f(c["usd_per_1m_output_tokens"], "${:.2f}"),
                        _f(c["usd_per_1m_tokens"], "${:.2f}"),
                        _f(c["usd_per_request"], "${:.5f}"),
                        _f(cap.get("workers"), "{:.2f}") + (f" → {cap['workers_whole']}" if cap else ""),
                        _f(c.get("kwh_per_1m_output_tokens"), "{:.2f}"),
                    ]
                )
        out += _table(
            [
                "run",
                "scenario",
                "output tok/s",
                "$/1M output",
                "$/1M tokens",
                "$/request",
                "workers",
                "kWh/1M output",
            ],
            rows,
        )
        out.append(
            f"At ${result['options']['usd_per_hour']}/h per worker; workers for "
            f"{_f(result['options']['tokens_per_month'], '{:,.0f}')} tokens/month × burst factor "
            f"{result['options']['burst_factor']}."
        )
        out.append("")

    if figures:
        out.append("## Figures")
        out += [f"![{name}]({name})" for name in figures]
        out.append("")
    return "\n".join(out) + "\n"


def _quality_md(quality: dict[str, Any] | None) -> list[str]:
    if not quality:
        return []
    out = ["## Quality"]
    sem = quality.get("semscore_model")
    out.append(
        f"SemScore model: {sem}" if sem else f"SemScore not computed: {quality.get('semscore_unavailable')}"
    )
    out.append("")
    for label, tasks in quality["runs"].items():
        out.append(f"### {label}")
        rows = []
        for task, t in tasks.items():
            for name, ci in t["scorers"].items():
                rows.append([task, name, str(t["n"]), _ci(ci, "{:.3f}")])
            rows.append([task, "**key average**", str(t["n"]), _ci(t["key_average"], "{:.3f}")])
        out += _table(["task", "scorer", "n", "mean [95 % CI]"], rows)
    for label, d in (quality.get("drift") or {}).items():
        moved = outputs_moved(d)
        out.append(f"### Drift: {label} vs baseline — {moved}, quality tier **{d['tier'] or 'n/a'}**")
        out.append(
            f"{d['prompts_shared']} shared prompts; identical outputs {_share(d['identical_rate'])};"
            f" output-vs-baseline ROUGE-L {_f(d['output_rouge_l'], '{:.3f}')}, SemScore "
            f"{_f(d['output_semscore'], '{:.3f}')}; KL(baseline ‖ candidate) over the first tokens "
            + (
                f"mean {d['kl_first_tokens']['mean']:.4f}, max {d['kl_first_tokens']['max']:.4f} nats "
                f"({d['kl_first_tokens']['prompts']} prompts)."
                if d.get("kl_first_tokens")
                else "not available (no logprobs recorded)."
            )
        )
        out.append("")
        rows = [
            [
                task,
                str(t["n"]),
                _f((t["identical_rate"] or 0) * 100, "{:.0f} %"),
                _f(t["output_rouge_l"], "{:.3f}"),
                _f(t["benchmark_delta_points"], "{:+.1f} pp"),
                _f(t["generation_delta_pct"], "{:+.1f} %"),
                t["tier"] or "n/a",
            ]
            for task, t in d["tasks"].items()
        ]
        out += _table(
            ["task", "n", "identical", "output ROUGE-L", "benchmark Δ", "generation Δ", "tier"], rows
        )
        if d["least_similar"]:
            out.append("Least similar outputs:")
            for row in d["least_similar"]:
                out.append(
                    f"- `{row['prompt_id']}` ({row['task']}, ROUGE-L {row['output_rouge_l']:.2f}): "
                    f"baseline “{_oneline(row['baseline'])}” → candidate “{_oneline(row['candidate'])}”"
                )
            out.append("")
    return out


def _oneline(text: str, width: int = 120) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


# --- console -------------------------------------------------------------------------------------------


def console_view(result: dict[str, Any]) -> Group:
    """Verdicts and drift tiers for the terminal."""
    parts: list[Any] = []
    for label, comp in result["comparisons"].items():
        table = Table(title=f"{label} vs {result['baseline']}", box=None, pad_edge=False)
        for col in ("scenario", "metric", "baseline p50", "candidate p50", "change", "p (adj.)", "verdict"):
            table.add_column(col, justify="left" if col in ("scenario", "metric", "verdict") else "right")
        for sc, rows in comp["scenarios"].items():
            for c in rows:
                style = {"worse": "red", "better": "green"}.get(c["verdict"], "")
                table.add_row(
                    sc,
                    c["metric"],
                    _f(c["median_baseline"]),
                    _f(c["median_candidate"]),
                    _pct(c["change_pct"]),
                    _f(c["p_adjusted"], "{:.3g}"),
                    Text(c["verdict"], style),
                )
        parts.append(table)
    quality = result.get("quality") or {}
    for label, d in (quality.get("drift") or {}).items():
        tiers = ", ".join(f"{task} {t['tier']}" for task, t in d["tasks"].items() if t["tier"])
        style = "red" if d["tier"] in ("concerning", "unacceptable") else "green"
        parts.append(
            Text.assemble(
                (f"quality {label}: ", "bold"),
                (f"{outputs_moved(d)}, ", "yellow") if d["drifted"] else f"{outputs_moved(d)}, ",
                (f"quality tier {d['tier'] or 'n/a'}", style),
                f" — identical {_share(d['identical_rate'])}, "
                f"output ROUGE-L {_f(d['output_rouge_l'], '{:.3f}')}"
                f" ({tiers})",
            )
        )
    if not result["comparisons"]:
        for label, perf in result["performance"].items():
            for sc, p in perf.items():
                ttft = (p["metrics"].get("ttft_ms") or {}).get("median_ci")
                e2e = (p["metrics"].get("e2e_ms") or {}).get("median_ci")
                parts.append(Text(f"{label} / {sc}: TTFT p50 {_ci(ttft)} ms, E2E p50 {_ci(e2e)} ms"))
        for label, tasks in (quality.get("runs") or {}).items():
            keys = ", ".join(
                f"{task} {_f((t['key_average'] or {}).get('estimate'), '{:.3f}')}"
                for task, t in tasks.items()
            )
            parts.append(Text(f"quality {label}: key average {keys}"))
    return Group(*parts)


def outputs_moved(drift: dict[str, Any]) -> str:
    """How the candidate's outputs compare with the baseline's, in words that match the figures."""
    if drift["drifted"]:
        return "outputs drifted"
    if drift.get("identical_rate") == 1:
        return "outputs identical"
    return f"outputs close to the baseline ({_share(drift.get('identical_rate'))} identical)"
