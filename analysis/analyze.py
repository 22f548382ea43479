"""``infermeter analyze``: runs in, decisions out — performance verdicts with CIs, quality and drift, cost.

The result is typed (``analysis.results.AnalysisResult``; ``summary.json`` of the analysis, schema-versioned);
``analysis.render`` renders it for people and ``analysis.publish`` sends its quality and regression figures
to Prometheus.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from agent.core.figures import COMPARED
from analysis.columns import Rows
from analysis.cost import cost_block
from analysis.inference import (
    RESAMPLES,
    SEED,
    Comparison,
    anova,
    bootstrap_ci,
    compare,
    compare_many,
    geometric_mean,
    scaling_fit,
)
from analysis.quality import (
    SIMILARITY_FLOOR,
    drift,
    score_stream,
)
from analysis.results import (
    AnalysisOptions,
    AnalysisResult,
    Anova,
    ColdStart,
    Cost,
    Fit,
    GeoRatio,
    MetricStats,
    Performance,
    Quality,
    RunComparison,
    RunInfo,
    RunSummary,
    ScenarioSummary,
    ServerSummary,
    SweepSummary,
)
from analysis.runs import Run
from analysis.scorers import load_semscorer
from analysis.server import server_summary
from analysis.stats import describe
from analysis.summary import summarize

__all__ = ["ANALYSIS_SCHEMA_VERSION", "METRICS", "Options", "analyze", "metric_values"]

ANALYSIS_SCHEMA_VERSION = 1

#: Per-request metrics compared between runs: (record field or derived name, lower is better, unit).
#: The per-request figures compared between runs, from the figure catalogue (``agent.core.figures``).
METRICS = COMPARED


@dataclass(slots=True)
class Options:
    """How to analyze: statistics, quality scoring and cost inputs."""

    alpha: float = 0.05
    resamples: int = RESAMPLES
    seed: int = SEED
    usd_per_hour: float | None = None
    tokens_per_month: float | None = None
    burst_factor: float = 1.0
    semscore: bool = True
    semscore_model: str | None = None
    similarity_floor: float = SIMILARITY_FLOOR


def _steady_ok(rows: Rows) -> Rows:
    return rows.where(rows.is_("status", "ok") & rows.is_("stage", "steady") & ~rows.f("cold_start"))


def metric_values(rows: Rows, metric: str) -> np.ndarray:
    """One value per ok steady warm request (``itl_ms_median``: the median gap within each request)."""
    ok = _steady_ok(rows)
    values = ok.cols.itl.medians(ok.index) if metric == "itl_ms_median" else ok.f(metric)
    known: np.ndarray = values[~np.isnan(values)]
    return known


def _scenario_summary(run: Run, name: str, rows: Rows) -> ScenarioSummary:
    """The run's own summary block for the scenario (SLOs and targets applied), else computed here."""
    if isinstance(run.summary, RunSummary) and name in run.summary.scenarios:
        return run.summary.scenarios[name]
    return summarize(rows).scenarios[name]


def _fits(rows: Rows) -> dict[str, Fit]:
    ok = _steady_ok(rows)
    pairs = {
        "e2e_ms_per_output_token": (ok.f("output_tokens"), ok.f("e2e_ms")),
        "ttft_ms_per_prompt_token": (ok.f("prompt_tokens"), ok.f("ttft_ms")),
    }
    out: dict[str, Fit] = {}
    for name, (xs, ys) in pairs.items():
        keep = ~np.isnan(xs) & ~np.isnan(ys)
        fit = scaling_fit(xs[keep], ys[keep]) if keep.any() else None
        if fit is not None:
            out[name] = fit
    return out


def _metrics(rows: Rows, opts: Options) -> dict[str, MetricStats]:
    out: dict[str, MetricStats] = {}
    for fig in METRICS:
        values = metric_values(rows, fig.key)
        distribution = describe(values)
        if distribution is None:
            continue
        out[fig.key] = MetricStats(
            unit=fig.unit,
            lower_is_better=fig.lower_is_better,
            distribution=distribution,
            median_ci=bootstrap_ci(values, "median", resamples=opts.resamples, seed=opts.seed),
        )
    return out


def _performance(run: Run, name: str, rows: Rows, opts: Options) -> Performance:
    summary = _scenario_summary(run, name, rows)
    cold = summary.cold_start
    steady = summary.latency_ms.get("ttft")
    steady_ttft = steady.p50 if steady is not None else None
    cold_ttft = cold.ttft_ms.p50 if cold.ttft_ms is not None else None
    return Performance(
        requests=summary.requests,
        metrics=_metrics(rows, opts),
        throughput=summary.throughput,
        goodput=summary.goodput,
        warmup=summary.warmup,
        cold_start=ColdStart(
            n=cold.n,
            ttft_p50_ms=cold_ttft,
            ttft_p50_delta_ms=cold_ttft - steady_ttft if cold_ttft is not None and steady_ttft else None,
            load_p50_ms=cold.load_ms.p50 if cold.load_ms is not None else None,
        ),
        overhead_pct=summary.overhead_pct,
        decode_fraction=summary.decode_fraction,
        tokens=summary.tokens,
        scaling=_fits(rows),
    )


def joules_per_token(summary: RunSummary | SweepSummary | None) -> float | None:
    """Output-token-weighted J/token over the stages whose energy window measured one."""
    energy = summary.energy if isinstance(summary, RunSummary) else None
    measured = energy.measured if energy is not None else []
    tokens = sum(s.output_tokens for s in measured)
    if not tokens:
        return None
    return float(sum((s.j_per_token or 0.0) * s.output_tokens for s in measured) / tokens)


def _cost(run: Run, perf: Performance, opts: Options) -> Cost | None:
    tp, tokens = perf.throughput, perf.tokens
    out_tok_s = tp.output_tok_s if tp is not None else None
    total = (out_tok_s or 0) + ((tp.prompt_tok_s if tp is not None else None) or 0)
    prompt = tokens.prompt if tokens is not None else None
    output = tokens.output if tokens is not None else None
    return cost_block(
        output_tok_s=out_tok_s,
        total_tok_s=total or None,
        prompt_tokens_mean=prompt.mean if prompt is not None else None,
        output_tokens_mean=output.mean if output is not None else None,
        usd_per_hour=opts.usd_per_hour,
        tokens_per_month=opts.tokens_per_month,
        burst_factor=opts.burst_factor,
        joules_per_token=joules_per_token(run.summary),
    )


def _server(run: Run) -> ServerSummary | None:
    """The run's server block: from its summary, else read again from its scraped series."""
    if run.summary is not None and run.summary.server is not None:
        return run.summary.server
    return server_summary(run.path, run.rows) if run.path.is_dir() else None


def _run_info(run: Run) -> RunInfo:
    manifest = run.manifest
    server = _server(run)
    flags = [f"{run.label}: {flag}" for flag in (server.flags if server is not None else [])]
    return RunInfo(
        label=run.label,
        path=str(run.path),
        run_id=run.run_id,
        backends=run.backends,
        models=run.models,
        scenarios=list(run.by_scenario),
        records=len(run.rows),
        ok=run.ok,
        config_sha256=manifest.scenario.sha256 if manifest is not None and manifest.scenario else None,
        started_at=manifest.started_at if manifest is not None else None,
        warnings=[*run.warnings, *flags],
        server=server,
    )


def _comparisons(
    baseline: Run, candidate: Run, opts: Options
) -> tuple[dict[str, list[Comparison]], dict[str, GeoRatio]]:
    base_sc, cand_sc = baseline.by_scenario, candidate.by_scenario
    shared = [s for s in cand_sc if s in base_sc]
    by_scenario: dict[str, list[Comparison]] = {}
    flat: list[Comparison] = []
    for sc in shared:
        rows = [
            compare(
                fig.key,
                metric_values(base_sc[sc], fig.key),
                metric_values(cand_sc[sc], fig.key),
                lower_is_better=fig.lower_is_better,
                alpha=opts.alpha,
                resamples=opts.resamples,
                seed=opts.seed,
            )
            for fig in METRICS
        ]
        rows = [c for c in rows if c.n_baseline or c.n_candidate]
        by_scenario[sc] = rows
        flat += rows
    compare_many(flat, opts.alpha)
    ratios: dict[str, GeoRatio] = {}
    for metric in (f.key for f in METRICS):
        values = [
            c.median_candidate / c.median_baseline
            for rows in by_scenario.values()
            for c in rows
            if c.metric == metric and c.median_baseline and c.median_candidate is not None
        ]
        gm = geometric_mean(values)
        if gm is not None:
            ratios[metric] = GeoRatio(scenarios=len(values), geomean_ratio=gm)
    return by_scenario, ratios


def _quality(
    runs: list[Run], baseline: Run | None, opts: Options, progress: Callable[[int, int], None] | None
) -> Quality | None:
    """Score each run's kept outputs as they stream from its files, then each run's drift from the baseline.

    Progress counts the ok steady records read (the columns give their number before scoring starts).
    """
    everyone = ([baseline] if baseline is not None else []) + runs
    semscorer, sem_error = load_semscorer(opts.semscore_model) if opts.semscore else (None, None)
    total = sum(_scored_count(run) for run in everyone)
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total)

    books = {
        run.label: score_stream(run.iter_outputs(), run.references, semscorer, advance=advance)
        for run in everyone
    }
    if not any(len(b) for b in books.values()):
        return None
    out = Quality(
        semscore_model=semscorer.model_name if semscorer else None,
        semscore_unavailable=sem_error if opts.semscore else "disabled (--no-semscore)",
        runs={label: b.task_scores(resamples=opts.resamples, seed=opts.seed) for label, b in books.items()},
        drift={},
    )
    if baseline is not None:
        for run in runs:
            out.drift[run.label] = drift(
                books[baseline.label].first_samples(),
                books[run.label].first_samples(),
                semscorer,
                resamples=opts.resamples,
                seed=opts.seed,
                similarity_floor=opts.similarity_floor,
            )
    return out


def _scored_count(run: Run) -> int:
    """How many records :func:`score_stream` reads through (ok, not warmup)."""
    rows = run.rows
    return int((rows.is_("status", "ok") & ~rows.f("is_warmup").astype(bool)).sum())


def _against(baseline: Run, run: Run, opts: Options) -> tuple[RunComparison, dict[str, int]]:
    """A candidate against the baseline: its comparison block and its count of each verdict."""
    by_scenario, ratios = _comparisons(baseline, run, opts)
    block = RunComparison(
        scenarios={sc: [c.row() for c in rows] for sc, rows in by_scenario.items()}, geomean_ratio=ratios
    )
    counts = {"better": 0, "worse": 0, "no detectable change": 0, "too few samples": 0}
    for row in itertools.chain.from_iterable(by_scenario.values()):
        counts[row.verdict] += 1
    return block, counts


def _anova(everyone: list[Run]) -> dict[str, dict[str, Anova]]:
    """One-way ANOVA across every run, per scenario they all ran and per metric."""
    out: dict[str, dict[str, Anova]] = {}
    for sc in sorted(set.intersection(*(set(r.by_scenario) for r in everyone))):
        rows = {}
        for metric in (f.key for f in METRICS):
            test = anova([metric_values(r.by_scenario[sc], metric) for r in everyone])
            if test is not None:
                rows[metric] = test
        out[sc] = rows
    return out


def analyze(
    runs: list[Run],
    baseline: Run | None = None,
    opts: Options | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> AnalysisResult:
    """Analyze ``runs`` (candidates), each against ``baseline`` when given; ``progress(done, total)``."""
    opts = opts or Options()
    if not runs:
        raise ValueError("nothing to analyze: give at least one run directory")
    everyone = ([baseline] if baseline else []) + runs
    labels = [r.label for r in everyone]
    if len(set(labels)) != len(labels):
        raise ValueError(f"runs need distinct folder names to be told apart; got {', '.join(labels)}")
    result = AnalysisResult(
        schema_version=ANALYSIS_SCHEMA_VERSION,
        kind="infermeter-analysis",
        created_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        options=AnalysisOptions(
            alpha=opts.alpha,
            resamples=opts.resamples,
            seed=opts.seed,
            usd_per_hour=opts.usd_per_hour,
            tokens_per_month=opts.tokens_per_month,
            burst_factor=opts.burst_factor,
        ),
        baseline=baseline.label if baseline else None,
        runs=[_run_info(r) for r in everyone],
        performance={},
        comparisons={},
        verdicts={},
        anova={},
        cost={},
    )
    for run in everyone:
        perf = {sc: _performance(run, sc, recs, opts) for sc, recs in run.by_scenario.items()}
        result.performance[run.label] = perf
        costs = {sc: c for sc, p in perf.items() if (c := _cost(run, p, opts)) is not None}
        if costs:
            result.cost[run.label] = costs
    if baseline is not None:
        for run in runs:
            result.comparisons[run.label], result.verdicts[run.label] = _against(baseline, run, opts)
    if len(everyone) >= 3:
        result.anova = _anova(everyone)
    result.quality = _quality(runs, baseline, opts, progress)
    return result
