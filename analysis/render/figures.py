"""PNG figures beside ``report.md`` (matplotlib, Agg): latency CDFs, ITL, sweep curves, quality deltas."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agent.core.files import write_atomic
from analysis.analyze import metric_values
from analysis.quantiles import stream_stats
from analysis.results import AnalysisResult, Drift, SweepSummary
from analysis.runs import Run

__all__ = ["write_figures"]


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


#: A CDF is drawn through at most this many of its steps (evenly spaced in rank, the last one kept): a
#: figure a few hundred pixels wide cannot show more, and a million-step line slows every draw.
CDF_POINTS = 4096


def _cdf(ax: Any, values: Sequence[float] | np.ndarray, label: str) -> None:
    xs = np.sort(np.asarray(values))
    n = xs.size
    ys = np.arange(1, n + 1) / n
    if n > CDF_POINTS:
        keep = np.unique(np.linspace(0, n - 1, CDF_POINTS).astype(np.int64))
        xs, ys = xs[keep], ys[keep]
    ax.step(xs, ys, where="post", label=f"{label} (n={n})")


def _save(fig: Any, out: Path, name: str) -> str:
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, dpi=110, format="png")
    _plt().close(fig)
    write_atomic(out / name, image.getvalue())
    return name


def latency_cdf(runs: list[Run], sc: str, out: Path) -> str | None:
    """TTFT and E2E CDFs of every run on one scenario."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    drawn = False
    for ax, metric, title in ((axes[0], "ttft_ms", "TTFT"), (axes[1], "e2e_ms", "E2E")):
        for run in runs:
            values = metric_values(run.scenario(sc), metric)
            if values.size:
                _cdf(ax, values, run.label)
                drawn = True
        ax.set_xlabel(f"{title} (ms)")
        ax.set_ylabel("share of requests")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{sc}: latency CDF (ok steady requests)")
    if not drawn:
        plt.close(fig)
        return None
    return _save(fig, out, f"latency_cdf_{sc}.png")


def _gap_chunks(run: Run, sc: str) -> Any:
    """A callable yielding every inter-token gap of the scenario's ok steady requests, some at a time."""
    rows = run.scenario(sc)
    ok = rows.where(rows.is_("status", "ok") & rows.is_("stage", "steady"))
    return lambda: (c[~np.isnan(c)] for c in ok.cols.itl.chunks(ok.index))


def gap_density(chunks: Any, bins: np.ndarray) -> np.ndarray:
    """The density ``np.histogram(values, bins, density=True)`` gives, summed over chunks of the values."""
    counts = np.zeros(bins.size - 1)
    for c in chunks():
        counts += np.histogram(c, bins=bins)[0]
    total = counts.sum()
    return counts / (total * np.diff(bins)) if total else counts


def itl_histogram(runs: list[Run], sc: str, out: Path) -> str | None:
    """Every inter-token gap of every run on one scenario, clipped at p99.5.

    The gaps are read a chunk at a time (the p99.5 by :func:`stream_stats`, the bins' counts summed), so
    a run of a hundred million gaps is drawn without holding them.
    """
    gaps = {}
    for run in runs:
        chunks = _gap_chunks(run, sc)
        if (stats := stream_stats(chunks, [99.5])) is not None:
            gaps[run.label] = (chunks, stats)
    if not gaps:
        return None
    fig, ax = _plt().subplots(figsize=(6, 3.6))
    hi = max(stats.percentiles[0] for _, stats in gaps.values())
    bins = np.linspace(0, hi if hi > 0 else 1, 60)
    for label, (chunks, stats) in gaps.items():
        ax.stairs(gap_density(chunks, bins), bins, label=f"{label} (n={stats.n})")
    ax.set_xlabel("inter-token gap (ms), every gap, clipped at p99.5")
    ax.set_ylabel("density")
    ax.set_title(f"{sc}: ITL distribution")
    ax.legend(fontsize=7)
    return _save(fig, out, f"itl_{sc}.png")


def sweep_curve(run: Run, out: Path) -> str | None:
    """Throughput against offered load for a sweep run, the knee marked."""
    if not isinstance(run.summary, SweepSummary) or len(run.summary.sweep.points) < 2:
        return None
    points, knee = run.summary.sweep.points, run.summary.sweep.knee
    fig, ax = _plt().subplots(figsize=(6, 3.6))
    ax.plot([p.load for p in points], [p.throughput for p in points], marker="o")
    if knee is not None:
        ax.axvline(knee.load, linestyle="--", color="grey", label=f"knee ({knee.stage})")
        ax.legend(fontsize=7)
    ax.set_xlabel("offered load")
    ax.set_ylabel(points[0].throughput_unit)
    ax.set_title(f"{run.label}: throughput vs load")
    ax.grid(alpha=0.3)
    return _save(fig, out, f"sweep_{run.label}.png")


def quality_deltas(label: str, d: Drift, baseline: str | None, out: Path) -> str | None:
    """Each task group's scorer deltas against the baseline, with their CIs."""
    rows = [
        (f"{task}/{name}", s.delta) for task, t in d.tasks.items() for name, s in t.scorers.items() if s.delta
    ]
    if not rows:
        return None
    fig, ax = _plt().subplots(figsize=(7, 0.28 * len(rows) + 1.2))
    ys = np.arange(len(rows))
    est = np.array([r.estimate for _, r in rows])
    err = np.array([[r.estimate - r.low for _, r in rows], [r.high - r.estimate for _, r in rows]])
    ax.errorbar(est, ys, xerr=err, fmt="o", capsize=3)
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_yticks(ys, [name for name, _ in rows], fontsize=7)
    ax.set_xlabel("candidate − baseline (score, 95 % CI)")
    ax.set_title(f"{label}: quality deltas against {baseline}")
    return _save(fig, out, f"quality_deltas_{label}.png")


def write_figures(runs: list[Run], result: AnalysisResult, out: Path) -> list[str]:
    """Write every figure the data supports into ``out``; return the file names in report order."""
    scenarios = list(dict.fromkeys(sc for run in runs for sc in run.by_scenario))
    names = [f(runs, sc, out) for sc in scenarios for f in (latency_cdf, itl_histogram)]
    names += [sweep_curve(run, out) for run in runs]
    drifts = result.quality.drift if result.quality else {}
    names += [quality_deltas(label, d, result.baseline, out) for label, d in drifts.items()]
    return [n for n in names if n is not None]
