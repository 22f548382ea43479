"""A study's analyses, offline, from its cells' run directories (method §3, §4, §6).

Repetitions are the unit: each cell gives one value per metric (the median over its ok steady warm
requests, or the cell's rate), so pooling requests across repetitions never passes for more evidence than
there is. Per scenario and metric: one-way ANOVA across variants; each variant against the baseline by
Welch's t and Mann–Whitney U (Holm across every comparison), Cohen's d, and an equivalence test (TOST)
within the study's margin. Per scenario: the decision matrix (speed, latency, cost, energy, quality tier
and drift against the baseline) and the recommendation. Across variants with a numeric axis: log-log fits.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import scipy.stats as sps

from agent.core.figures import RUN_FIGURES
from agent.core.manifest import Manifest
from agent.core.rundir import RunDir, StudyDir
from agent.core.study import Cell, Study, cell_status
from analysis.analyze import METRICS, joules_per_token, metric_values
from analysis.cost import usd_per_million
from analysis.inference import anova, cohens_d, holm, min_detectable_d, scaling_fit, tost
from analysis.quality import Sample, ScoreBook, drift, score_stream
from analysis.results import (
    CellInfo,
    DecisionRow,
    Drift,
    EquivalenceRow,
    Recommendation,
    RunSummary,
    ScalingRow,
    StudyAnova,
    StudyResult,
    TaskQuality,
    VariantInfo,
)
from analysis.runs import Run, load_run
from analysis.scorers import SemScorer

__all__ = ["CELL_FIGURES", "STUDY_SCHEMA_VERSION", "analyze_study"]

STUDY_SCHEMA_VERSION = 1
#: Cell-level figures beside the per-request medians, from the figure catalogue.
CELL_FIGURES = RUN_FIGURES
LOWER_IS_BETTER = {f.key: f.lower_is_better for f in (*METRICS, *CELL_FIGURES)}
ACCEPTABLE = ("negligible", "acceptable")


def _cell_figures(run: Run) -> dict[str, float | None]:
    """One value per metric for the cell: request medians, and the cell's rates from its summary."""
    figures: dict[str, float | None] = {}
    for metric in (f.key for f in METRICS):
        values = metric_values(run.rows, metric)
        figures[metric] = float(np.median(values)) if values.size else None
    summary = run.summary if isinstance(run.summary, RunSummary) else None
    s = next(iter(summary.scenarios.values()), None) if summary is not None else None
    e2e = s.latency_ms.get("e2e") if s is not None else None
    figures["output_tok_s"] = s.throughput.output_tok_s if s is not None else None
    figures["e2e_p95_ms"] = e2e.p95 if e2e is not None else None
    figures["success_rate"] = s.requests.success_rate if s is not None else None
    figures["j_per_token"] = joules_per_token(summary)
    return figures


def _failure(folder: Path) -> str | None:
    """Why a failed cell failed, where its manifest says."""
    try:
        manifest = Manifest.read(RunDir(folder).manifest)
    except (OSError, ValueError):
        return None
    return manifest.error if manifest is not None and manifest.error else None


class _Cells:
    """The study's cells read from disk, and their values grouped for the tests."""

    def __init__(self, study: Study, root: Path) -> None:
        self.study = study
        self.infos: list[CellInfo] = []
        self.runs: dict[tuple[str, str], list[Run]] = defaultdict(list)
        for cell in sorted(study.cells(), key=lambda c: (c.variant, c.scenario, c.repetition)):
            self.infos.append(self._read(cell, StudyDir(root).cell(cell.name).path))

    def _read(self, cell: Cell, folder: Path) -> CellInfo:
        status = cell_status(folder)
        info = CellInfo(
            name=cell.name,
            variant=cell.variant,
            scenario=cell.scenario,
            repetition=cell.repetition,
            status=status,
        )
        if status != "completed":
            info.detail = _failure(folder) if status == "failed" else None
            return info
        run = load_run(folder)
        self.runs[(cell.variant, cell.scenario)].append(run)
        info.records, info.ok = len(run.rows), run.ok
        info.figures = _cell_figures(run)
        return info

    def values(self, variant: str, scenario: str, metric: str) -> list[float]:
        """The metric's per-cell values of one variant on one scenario (completed cells only)."""
        return [
            v
            for c in self.infos
            if c.variant == variant and c.scenario == scenario and (v := c.figures.get(metric)) is not None
        ]

    def metrics(self) -> list[str]:
        """Every metric some completed cell has a value for, in a stable order."""
        names = [f.key for f in (*METRICS, *CELL_FIGURES)]
        return [m for m in names if any(c.figures.get(m) is not None for c in self.infos)]


def _compare(study: Study, cells: _Cells, scenario: str, metric: str, variant: str) -> EquivalenceRow:
    base = np.asarray(cells.values(study.baseline, scenario, metric))
    cand = np.asarray(cells.values(variant, scenario, metric))
    row = EquivalenceRow(
        scenario=scenario,
        metric=metric,
        variant=variant,
        n_baseline=base.size,
        n_candidate=cand.size,
        verdict="too few repetitions",
    )
    if base.size:
        row.mean_baseline = float(base.mean())
    if cand.size:
        row.mean_candidate = float(cand.mean())
    if base.size and cand.size and row.mean_baseline:
        row.change_pct = (float(cand.mean()) / float(base.mean()) - 1) * 100
    if base.size < 2 or cand.size < 2:
        return row
    if np.ptp(np.concatenate([base, cand])) == 0:
        row.p_welch = row.p_mann_whitney = 1.0
    else:
        row.p_mann_whitney = float(sps.mannwhitneyu(cand, base, alternative="two-sided").pvalue)
        if base.var() > 0 or cand.var() > 0:
            row.p_welch = float(sps.ttest_ind(cand, base, equal_var=False).pvalue)
    row.cohens_d = cohens_d(base, cand)
    row.margin = abs(float(base.mean())) * study.equivalence.margin_pct / 100
    row.p_tost = tost(base, cand, row.margin)
    d = min_detectable_d(base.size, cand.size, study.alpha)
    pooled = math.sqrt((base.var(ddof=1) + cand.var(ddof=1)) / 2)
    row.mde = d * pooled if d is not None else None
    return row


def _verdicts(rows: list[EquivalenceRow], alpha: float) -> None:
    """Holm across every comparison, then each row's verdict."""
    for row, p in zip(rows, holm([r.p_welch for r in rows]), strict=True):
        row.p_adjusted = p
        if row.n_baseline < 2 or row.n_candidate < 2:
            row.verdict = "too few repetitions"
        elif row.p_tost is not None and row.p_tost < alpha:
            row.verdict = "equivalent"
        elif p is not None and p < alpha:
            row.verdict = "different"
        else:
            row.verdict = "inconclusive"


def _equivalence(study: Study, cells: _Cells) -> tuple[list[EquivalenceRow], list[StudyAnova]]:
    cell_figures = {f.key for f in CELL_FIGURES}
    metrics = [m for m in cells.metrics() if m in study.equivalence.metrics or m in cell_figures]
    rows, tests = [], []
    for scenario in study.scenarios:
        for metric in metrics:
            groups = [cells.values(v, scenario, metric) for v in study.variants]
            test = anova(groups, min_groups=2)
            if test is not None:
                tests.append(StudyAnova(scenario=scenario, metric=metric, f=test.f, p=test.p))
            rows += [
                _compare(study, cells, scenario, metric, v) for v in study.variants if v != study.baseline
            ]
    _verdicts(rows, study.alpha)
    return rows, tests


def _lowest(values: list[float]) -> float | None:
    """The worst cell's figure: a variant is as reliable as its worst repetition."""
    return min(values) if values else None


def _median(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None


def _samples(runs: list[Run], semscorer: SemScorer | None) -> list[Sample]:
    """Each prompt's first kept output across the runs, scored by its task's scorers (SemScore where given).

    What :func:`drift` pairs; every other output is scored as it streams and only its numbers kept.
    """
    book = ScoreBook()
    for run in runs:
        score_stream(run.iter_outputs(), run.references, semscorer, book=book)
    return book.first_samples()


def _quality(row: DecisionRow, d: Drift) -> None:
    """Copy a drift result into the row: the tier, the worst deltas, and each task group's."""
    row.tier, row.identical_rate = d.tier, d.identical_rate
    row.kl_mean = d.kl_first_tokens.mean if d.kl_first_tokens is not None else None
    for task, t in d.tasks.items():
        if t.tier is None:
            continue
        row.quality_by_task[task] = TaskQuality(
            n=t.n,
            tier=t.tier,
            benchmark_delta_points=t.benchmark_delta_points,
            generation_delta_pct=t.generation_delta_pct,
            similarity_rouge_l=t.output_rouge_l,
        )
    points = [
        t.benchmark_delta_points for t in row.quality_by_task.values() if t.benchmark_delta_points is not None
    ]
    pct = [t.generation_delta_pct for t in row.quality_by_task.values() if t.generation_delta_pct is not None]
    row.benchmark_delta_points = min(points) if points else None
    row.generation_delta_pct = min(pct) if pct else None


def _decision(study: Study, cells: _Cells, scenario: str, semscorer: SemScorer | None) -> list[DecisionRow]:
    """The decision matrix of one scenario: one row per variant."""
    base_samples = _samples(cells.runs.get((study.baseline, scenario), []), semscorer)
    rows = []
    for name, variant in study.variants.items():
        tok_s = _median(cells.values(name, scenario, "output_tok_s"))
        price = variant.usd_per_hour or study.usd_per_hour
        row = DecisionRow(
            scenario=scenario,
            variant=name,
            output_tok_s=tok_s,
            e2e_p95_ms=_median(cells.values(name, scenario, "e2e_p95_ms")),
            ttft_p50_ms=_median(cells.values(name, scenario, "ttft_ms")),
            usd_per_1m_output_tokens=usd_per_million(tok_s, price) if tok_s and price else None,
            j_per_token=_median(cells.values(name, scenario, "j_per_token")),
            success_rate=_lowest(cells.values(name, scenario, "success_rate")),
        )
        samples = _samples(cells.runs.get((name, scenario), []), semscorer)
        if base_samples and samples:
            _quality(row, drift(base_samples, samples, semscorer, resamples=1000, seed=study.seed))
        rows.append(row)
    return rows


def _recommend(
    study: Study, scenario: str, rows: list[DecisionRow], equivalence: list[EquivalenceRow]
) -> Recommendation:
    """The cheapest (else fastest) variant whose quality tier is acceptable or better, with the reason.

    A variant whose only lead is throughput (same price per hour as the baseline, or no prices) does not
    displace the baseline when its output tok/s is *equivalent* to the baseline's within the study's
    margin: the lead is on paper only. An *inconclusive* lead is named as such.
    """
    floor = study.min_success_rate
    unreliable = [r for r in rows if r.output_tok_s and (r.success_rate or 0.0) < floor]
    graded = any(r.tier is not None for r in rows)
    ok = [
        r
        for r in rows
        if r.output_tok_s
        and r not in unreliable
        and (not graded or r.variant == study.baseline or r.tier in ACCEPTABLE)
    ]
    if not ok:
        why = "no variant completed a cell with a throughput figure"
        if unreliable:
            why = f"no variant succeeded often enough; left out for success rate: {_rates(unreliable, floor)}"
        return Recommendation(scenario=scenario, reason=why)
    priced = all(r.usd_per_1m_output_tokens is not None for r in ok)
    best = (
        min(ok, key=lambda r: (r.usd_per_1m_output_tokens or 0.0, -(r.output_tok_s or 0.0)))
        if priced
        else max(ok, key=lambda r: r.output_tok_s or 0.0)
    )
    by = (
        f"cheapest at ${best.usd_per_1m_output_tokens:.2f} per 1M output tokens"
        if priced
        else f"fastest at {best.output_tok_s:.1f} output tok/s (no price given)"
    )
    among = "quality tier acceptable or better against the baseline" if graded else "quality not graded"
    left = [r.variant for r in rows if r not in ok and r not in unreliable and r.output_tok_s]
    reason = f"{best.variant}: {by}, among {len(ok)} variant(s) ({among})"
    verdict = _throughput_verdict(equivalence, scenario, best.variant)
    base = next((r for r in ok if r.variant == study.baseline), None)
    price = {n: v.usd_per_hour or study.usd_per_hour for n, v in study.variants.items()}
    by_throughput = price[best.variant] == price[study.baseline]
    if base is not None and best is not base and verdict == "equivalent" and by_throughput:
        margin = study.equivalence.margin_pct
        reason = (
            f"{base.variant} (the baseline): {best.variant} leads only on paper ({by}), its output "
            f"tok/s equivalent to the baseline's within ±{margin:g} %"
        )
        best = base
    elif verdict == "inconclusive" and by_throughput:
        reason += "; its lead in output tok/s is inconclusive: more repetitions would settle it"
    if left:
        reason += f"; left out for quality: {', '.join(left)}"
    if unreliable:
        reason += f"; left out for success rate: {_rates(unreliable, floor)}"
    return Recommendation(scenario=scenario, variant=best.variant, reason=reason)


def _throughput_verdict(equivalence: list[EquivalenceRow], scenario: str, variant: str) -> str | None:
    """The equivalence verdict on ``variant``'s output tok/s against the baseline's, if it was tested."""
    for e in equivalence:
        if e.scenario == scenario and e.variant == variant and e.metric == "output_tok_s":
            return e.verdict
    return None


def _rates(rows: list[DecisionRow], floor: float) -> str:
    """``name (10 % < 95 %)`` for each variant under the study's success floor."""
    return ", ".join(f"{r.variant} ({(r.success_rate or 0) * 100:.0f} % < {floor * 100:.0f} %)" for r in rows)


def _scaling(study: Study, cells: _Cells) -> list[ScalingRow]:
    """log(figure) against log(axis) over every completed cell, per axis, scenario and metric."""
    axes = sorted({a for v in study.variants.values() for a in v.axis})
    out = []
    for axis in axes:
        with_axis = {
            n: v.axis[axis] for n, v in study.variants.items() if axis in v.axis and v.axis[axis] > 0
        }
        if len(set(with_axis.values())) < 2:
            continue
        for scenario in study.scenarios:
            for metric in ("output_tok_s", "ttft_ms", "e2e_ms", "tpot_ms"):
                xs, ys = [], []
                for name, x in with_axis.items():
                    for y in cells.values(name, scenario, metric):
                        if y > 0:
                            xs.append(math.log(x))
                            ys.append(math.log(y))
                fit = scaling_fit(xs, ys)
                if fit is not None:
                    out.append(ScalingRow(axis=axis, scenario=scenario, metric=metric, fit=fit))
    return out


def _variants(study: Study, cells: _Cells) -> list[VariantInfo]:
    infos = []
    for name, v in study.variants.items():
        runs = [r for (vn, _), rs in cells.runs.items() if vn == name for r in rs]
        manifest = runs[0].manifest if runs else None
        backend = manifest.backend if manifest is not None else None
        facts = backend.model_dump(mode="json", exclude_unset=True) if backend is not None else {}
        infos.append(
            VariantInfo(
                name=name,
                backend=v.backend,
                description=v.description,
                model=v.model,
                labels=v.labels,
                axis=v.axis,
                facts=facts,
            )
        )
    return infos


def analyze_study(study: Study, root: Path, *, semscorer: SemScorer | None = None) -> StudyResult:
    """Every analysis of the study from the cells under ``root/cells``.

    Kept outputs are scored by their tasks' scorers (reference-based where the scenario has references;
    SemScore too when ``semscorer`` is given), and each variant's quality tier against the baseline is
    the worse of its benchmark and generation deltas, per task group.
    """
    cells = _Cells(study, root)
    equivalence, tests = _equivalence(study, cells)
    decision = [row for sc in study.scenarios for row in _decision(study, cells, sc, semscorer)]
    recommendations = [
        _recommend(study, sc, [r for r in decision if r.scenario == sc], equivalence)
        for sc in study.scenarios
    ]
    return StudyResult(
        schema_version=STUDY_SCHEMA_VERSION,
        kind="infermeter-study",
        created_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        name=study.name,
        description=study.description,
        order=study.order,
        seed=study.seed,
        repetitions=study.repetitions,
        baseline=study.baseline,
        alpha=study.alpha,
        margin_pct=study.equivalence.margin_pct,
        variants=_variants(study, cells),
        cells=cells.infos,
        equivalence=equivalence,
        anova=tests,
        decision=decision,
        recommendations=recommendations,
        scaling=_scaling(study, cells),
        semscore_model=semscorer.model_name if semscorer else None,
    )
