"""``report.md``: the analysis for people, one function per section, in the order ``SECTIONS`` lists them."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from analysis.render.text import ci, md, md_table, oneline, outputs_moved, p50, pct, share, two
from analysis.results import AnalysisResult, Drift, Performance, Requests, RunComparison, Throughput, Warmup

__all__ = ["SECTIONS", "render_markdown"]


def header(result: AnalysisResult) -> list[str]:
    """Title, statistics used, and when."""
    o = result.options
    return [
        "# infermeter analysis",
        "",
        f"α = {o.alpha}, bootstrap {o.resamples:,} resamples (seed {o.seed}); created {result.created_at}.",
        "",
    ]


def runs(result: AnalysisResult) -> list[str]:
    """Which runs, their role, backend, model, scenarios and record counts; their warnings."""
    out = ["## Runs"]
    out += md_table(
        ["run", "role", "backend", "model", "scenarios", "records (ok)", "config sha256"],
        [
            [
                r.label,
                "baseline" if r.label == result.baseline else "candidate",
                ", ".join(r.backends),
                ", ".join(r.models),
                ", ".join(r.scenarios),
                f"{r.records} ({r.ok})",
                (r.config_sha256 or "—")[:12],
            ]
            for r in result.runs
        ],
    )
    warnings = [w for r in result.runs for w in r.warnings]
    if warnings:
        out += ["Warnings:", *[f"- {md(w)}" for w in warnings], ""]
    return out + _server_table(result)


def _server_table(result: AnalysisResult) -> list[str]:
    """The server's own view of each run's stages, where the runs scraped it."""
    rows = []
    for r in result.runs:
        for st in r.server.stages if r.server is not None else []:
            rows.append(
                [
                    r.label,
                    oneline(st.stage),
                    oneline(st.engine or "—"),
                    two(st.peak("running")),
                    two(st.peak("waiting")),
                    share(st.peak("kv_usage")),
                    two(st.preemptions),
                    share(st.prefix_hit_ratio),
                    two(st.ttft_server_mean_ms),
                    two(st.ttft_client_and_network_ms),
                ]
            )
    if not rows:
        return []
    head = [
        "run",
        "stage",
        "engine",
        "running peak",
        "waiting peak",
        "KV peak",
        "preempted",
        "prefix hits",
        "server TTFT mean ms",
        "client + network ms",
    ]
    return ["### The server's own view", *md_table(head, rows)]


def comparisons(result: AnalysisResult) -> list[str]:
    """Each candidate against the baseline: counts of verdicts, then a table per scenario."""
    out: list[str] = []
    for label, comp in result.comparisons.items():
        counts = result.verdicts[label]
        out.append(f"## Performance: {md(label)} vs {md(result.baseline)}")
        out.append(
            f"{counts['worse']} worse, {counts['better']} better, {counts['no detectable change']} without a "
            f"detectable change (Mann–Whitney U, Holm-adjusted across all {sum(counts.values())} metrics)."
        )
        out.append("")
        out += _comparison(comp)
    return out


def _comparison(comp: RunComparison) -> list[str]:
    out: list[str] = []
    head = ["metric", "baseline p50", "candidate p50", "change", "Δ p50 95 % CI", "p (adj.)", "d", "MDE"]
    for sc, rows in comp.scenarios.items():
        out.append(f"### {md(sc)}")
        out += md_table(
            [*head, "verdict"],
            [
                [
                    c.metric,
                    two(c.median_baseline),
                    two(c.median_candidate),
                    pct(c.change_pct),
                    ci(c.diff_ci, "{:.2f}"),
                    two(c.p_adjusted, "{:.3g}"),
                    f"{two(c.cohens_d)} {c.effect or ''}".strip(),
                    two(c.mde_abs),
                    f"**{c.verdict}**" if c.verdict in ("better", "worse") else c.verdict,
                ]
                for c in rows
            ],
        )
    if comp.geomean_ratio:
        out.append("Geometric mean of candidate/baseline median ratios across scenarios:")
        out += md_table(
            ["metric", "scenarios", "ratio"],
            [[m, str(r.scenarios), f"{r.geomean_ratio:.3f}"] for m, r in comp.geomean_ratio.items()],
        )
    return out


def performance(result: AnalysisResult) -> list[str]:
    """Every run on every scenario: the metric table and the key lines."""
    out = ["## Performance per run"]
    for label, perf in result.performance.items():
        for sc, p in perf.items():
            out.append(f"### {md(label)} / {md(sc)}")
            out += _performance(p)
    return out


def _performance(p: Performance) -> list[str]:
    req = p.requests or Requests(steady=0, ok=0, degraded=0)
    out = [
        f"{req.ok} ok of {req.steady} steady requests; success rate "
        f"{two((req.success_rate or 0) * 100, '{:.1f}')} %.",
        "",
    ]
    out += md_table(
        ["metric", "n", "p50 [95 % CI]", "p95", "p99", "max"],
        [
            [
                m,
                str(v.distribution.n),
                ci(v.median_ci, "{:.2f}"),
                two(v.distribution.p95),
                two(v.distribution.p99),
                two(v.distribution.max),
            ]
            for m, v in p.metrics.items()
        ],
    )
    return [*out, *_key_lines(p), ""]


def _key_lines(p: Performance) -> list[str]:
    warm, cold, tp = p.warmup or Warmup(), p.cold_start, p.throughput or Throughput()
    lines = [
        f"- throughput: {two(tp.output_tok_s, '{:.1f}')} output tok/s, "
        f"{two(tp.requests_per_s, '{:.3f}')} req/s",
        f"- warmup ratio: {two(warm.ratio)}"
        + (" — above 10, use a warm pool" if warm.needs_warm_pool else ""),
        f"- cold starts: {cold.n} (TTFT p50 {two(cold.ttft_p50_ms, '{:.1f}')} ms, "
        f"{two(cold.ttft_p50_delta_ms, '{:+.1f}')} ms over steady)",
        f"- decode fraction p50: {two(p50(p.decode_fraction), '{:.3f}')}; "
        f"overhead outside native decode p50: {two(p50(p.overhead_pct), '{:.1f}')} %",
    ]
    if p.goodput:
        lines.append(f"- goodput: {p.goodput.share * 100:.1f} % of steady requests met {p.goodput.slo}")
    for name, fit in p.scaling.items():
        verdict = "actionable" if fit.actionable else "not actionable (R² < 0.2 or CI spans 0)"
        lines.append(
            f"- fit {name}: slope {fit.slope:.3f} [{fit.slope_ci[0]:.3f}, {fit.slope_ci[1]:.3f}], "
            f"R² {fit.r2:.2f}, n {fit.n} — {verdict}"
        )
    return lines


def anova(result: AnalysisResult) -> list[str]:
    """The one-way ANOVA across all runs, once, after every run's section."""
    if not result.anova:
        return []
    return [
        "One-way ANOVA across all runs (per scenario and metric):",
        *md_table(
            ["scenario", "metric", "F", "p"],
            [
                [sc, m, f"{a.f:.2f}", f"{a.p:.3g}"]
                for sc, rows in result.anova.items()
                for m, a in rows.items()
            ],
        ),
    ]


def quality(result: AnalysisResult) -> list[str]:
    """Scores per run and task group, then each candidate's drift from the baseline."""
    q = result.quality
    if q is None:
        return []
    out = ["## Quality"]
    sem = q.semscore_model
    out += [f"SemScore model: {sem}" if sem else f"SemScore not computed: {q.semscore_unavailable}", ""]
    for label, tasks in q.runs.items():
        out.append(f"### {md(label)}")
        rows = []
        for task, t in tasks.items():
            rows += [[task, name, str(t.n), ci(interval, "{:.3f}")] for name, interval in t.scorers.items()]
            rows.append([task, "**key average**", str(t.n), ci(t.key_average, "{:.3f}")])
        out += md_table(["task", "scorer", "n", "mean [95 % CI]"], rows)
    for label, d in q.drift.items():
        out += _drift(label, d)
    return out


def _drift(label: str, d: Drift) -> list[str]:
    kl = d.kl_first_tokens
    out = [
        f"### Drift: {md(label)} vs baseline — {outputs_moved(d)}, quality tier **{d.tier or 'n/a'}**",
        f"{d.prompts_shared} shared prompts; identical outputs {share(d.identical_rate)};"
        f" output-vs-baseline ROUGE-L {two(d.output_rouge_l, '{:.3f}')}, SemScore "
        f"{two(d.output_semscore, '{:.3f}')}; KL(baseline ‖ candidate) over the first tokens "
        + (
            f"mean {kl.mean:.4f}, max {kl.max:.4f} nats ({kl.prompts} prompts)."
            if kl
            else "not available (no logprobs recorded)."
        ),
        "",
    ]
    rows = [
        [
            task,
            str(t.n),
            two((t.identical_rate or 0) * 100, "{:.0f} %"),
            two(t.output_rouge_l, "{:.3f}"),
            two(t.benchmark_delta_points, "{:+.1f} pp"),
            two(t.generation_delta_pct, "{:+.1f} %"),
            t.tier or "n/a",
        ]
        for task, t in d.tasks.items()
    ]
    out += md_table(["task", "n", "identical", "output ROUGE-L", "benchmark Δ", "generation Δ", "tier"], rows)
    if d.least_similar:
        out.append("Least similar outputs:")
        out += [
            f"- {md(row.prompt_id)} ({md(row.task)}, ROUGE-L {row.output_rouge_l:.2f}): "
            f"baseline “{oneline(row.baseline)}” → candidate “{oneline(row.candidate)}”"
            for row in d.least_similar
        ]
        out.append("")
    return out


def cost(result: AnalysisResult) -> list[str]:
    """Cost and capacity per run and scenario, with the inputs they assume."""
    if not result.cost:
        return []
    rows = []
    for label, per in result.cost.items():
        for sc, c in per.items():
            cap = c.capacity
            rows.append(
                [
                    label,
                    sc,
                    two(c.output_tok_s, "{:.1f}"),
                    two(c.usd_per_1m_output_tokens, "${:.2f}"),
                    two(c.usd_per_1m_tokens, "${:.2f}"),
                    two(c.usd_per_request, "${:.5f}"),
                    two(cap.workers if cap else None, "{:.2f}") + (f" → {cap.workers_whole}" if cap else ""),
                    two(c.kwh_per_1m_output_tokens, "{:.2f}"),
                ]
            )
    head = ["run", "scenario", "output tok/s", "$/1M output", "$/1M tokens", "$/request", "workers"]
    o = result.options
    return [
        "## Cost and capacity",
        *md_table([*head, "kWh/1M output"], rows),
        f"At ${o.usd_per_hour}/h per worker; workers for {two(o.tokens_per_month, '{:,.0f}')} tokens/month"
        f" × burst factor {o.burst_factor}.",
        "",
    ]


def figures(result: AnalysisResult) -> list[str]:
    """Every figure written beside the report."""
    if not result.figures:
        return []
    return ["## Figures", *[f"![{name}]({name})" for name in result.figures], ""]


#: The report's sections, in order.
SECTIONS: Sequence[Callable[[AnalysisResult], list[str]]] = (
    header,
    runs,
    comparisons,
    performance,
    anova,
    quality,
    cost,
    figures,
)


def render_markdown(result: AnalysisResult) -> str:
    """The whole report as Markdown."""
    return "\n".join(line for section in SECTIONS for line in section(result)) + "\n"
