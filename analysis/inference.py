"""Inferential statistics (method §3): bootstrap CIs, two-sample tests, effect sizes, Holm, fits.

scipy does the tests; resampling is numpy with a seeded generator, so every figure is reproducible. The
verdict on a metric is the Mann–Whitney U test (latency distributions are skewed, so rank-based) after
Holm–Bonferroni across the metrics compared together; Welch's t and Cohen's d are reported beside it, and
so is the smallest effect the samples could have detected.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np
from scipy import stats as sps

from analysis.results import Anova, ComparisonRow, Fit, Interval

__all__ = [
    "Comparison",
    "Interval",
    "anova",
    "bootstrap_ci",
    "bootstrap_diff_ci",
    "cohens_d",
    "compare",
    "compare_many",
    "effect_label",
    "geometric_mean",
    "holm",
    "min_detectable_d",
    "scaling_fit",
    "tost",
]

RESAMPLES = 10_000
SEED = 20240611
#: Largest resample block held in memory at once (indices), so 10,000 resamples of a big run stay small.
_BLOCK_CELLS = 2_000_000

Statistic = Literal["mean", "median"]
Verdict = Literal["better", "worse", "no detectable change", "too few samples"]


def _stat_fn(statistic: Statistic) -> Callable[..., Any]:
    return np.median if statistic == "median" else np.mean


#: Above this many values a resample's statistic is drawn from its distribution rather than computed from
#: a resample (which costs n per resample: minutes at a million requests). The distribution is the
#: bootstrap's own: the median of a resample is the order statistic whose rank a binomial count decides,
#: the mean of one is normal with the sample's spread over √n; the draws use the same seeded generator.
DRAWN_ABOVE = 20_000


def _drawn_medians(values: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Medians of with-replacement resamples, drawn from their exact distribution.

    A resample's k-th smallest value is at most the j-th distinct value exactly when at least k of its n
    draws fall at or below it: a binomial count with p = (values ≤ it) / n. For an even n the two middle
    order statistics share one uniform draw and are averaged, as numpy's median averages them.
    """
    n = values.size
    uniq, counts = np.unique(values, return_counts=True)
    share = np.cumsum(counts) / n
    u = rng.random(resamples)
    ranks = [(n + 1) // 2] if n % 2 else [n // 2, n // 2 + 1]
    drawn = []
    for k in ranks:
        cdf = sps.binom.sf(k - 1, n, share)  # P(k-th smallest ≤ each distinct value)
        drawn.append(uniq[np.minimum(np.searchsorted(cdf, u, side="left"), uniq.size - 1)])
    return drawn[0] if len(drawn) == 1 else (drawn[0] + drawn[1]) / 2


def _resampled(
    values: np.ndarray, statistic: Statistic, resamples: int, rng: np.random.Generator
) -> np.ndarray:
    """The statistic of ``resamples`` with-replacement resamples of ``values``, computed in blocks."""
    n = values.size
    if n > DRAWN_ABOVE:
        if statistic == "median":
            return _drawn_medians(values, resamples, rng)
        return rng.normal(values.mean(), values.std() / math.sqrt(n), resamples)
    fn = _stat_fn(statistic)
    out = np.empty(resamples)
    block = max(1, _BLOCK_CELLS // n)
    for start in range(0, resamples, block):
        stop = min(start + block, resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = fn(values[idx], axis=1)
    return out


def _array(values: Sequence[float] | np.ndarray) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    return arr[np.isfinite(arr)]


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    statistic: Statistic = "median",
    *,
    resamples: int = RESAMPLES,
    level: float = 0.95,
    seed: int = SEED,
) -> Interval | None:
    """Percentile bootstrap interval of the mean or median; None without values."""
    arr = _array(values)
    if arr.size == 0:
        return None
    estimate = float(_stat_fn(statistic)(arr))
    if arr.size == 1:
        return Interval(estimate=estimate, low=estimate, high=estimate, level=level, n=1)
    boot = _resampled(arr, statistic, resamples, np.random.default_rng(seed))
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(boot, [tail, 100 - tail])
    return Interval(estimate=estimate, low=float(low), high=float(high), level=level, n=int(arr.size))


def bootstrap_diff_ci(
    baseline: Sequence[float] | np.ndarray,
    candidate: Sequence[float] | np.ndarray,
    statistic: Statistic = "median",
    *,
    resamples: int = RESAMPLES,
    level: float = 0.95,
    seed: int = SEED,
) -> Interval | None:
    """Interval of statistic(candidate) − statistic(baseline), the two samples resampled independently."""
    a, b = _array(baseline), _array(candidate)
    if a.size == 0 or b.size == 0:
        return None
    fn = _stat_fn(statistic)
    estimate = float(fn(b) - fn(a))
    rng = np.random.default_rng(seed)
    diff = _resampled(b, statistic, resamples, rng) - _resampled(a, statistic, resamples, rng)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(diff, [tail, 100 - tail])
    n = int(min(a.size, b.size))
    return Interval(estimate=estimate, low=float(low), high=float(high), level=level, n=n)


def _pooled_sd(a: np.ndarray, b: np.ndarray) -> float | None:
    """The two samples' pooled standard deviation; None under two values each."""
    n1, n2 = a.size, b.size
    if n1 < 2 or n2 < 2:
        return None
    return math.sqrt(((n1 - 1) * a.var(ddof=1) + (n2 - 1) * b.var(ddof=1)) / (n1 + n2 - 2))


def cohens_d(baseline: Sequence[float] | np.ndarray, candidate: Sequence[float] | np.ndarray) -> float | None:
    """(mean candidate − mean baseline) / pooled sd; None when the pooled sd is 0 or undefined."""
    a, b = _array(baseline), _array(candidate)
    pooled = _pooled_sd(a, b)
    if not pooled:
        return None
    return float((b.mean() - a.mean()) / pooled)


def effect_label(d: float | None) -> str | None:
    """Cohen's conventions on |d|: negligible < 0.2 ≤ small < 0.5 ≤ medium < 0.8 ≤ large."""
    if d is None:
        return None
    size = abs(d)
    return "negligible" if size < 0.2 else "small" if size < 0.5 else "medium" if size < 0.8 else "large"


def min_detectable_d(n1: int, n2: int, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """Smallest |d| a two-sided two-sample test at ``alpha`` detects with ``power`` (normal approximation)."""
    if n1 < 2 or n2 < 2:
        return None
    z = sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(power)
    return float(z * math.sqrt(1 / n1 + 1 / n2))


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm–Bonferroni adjusted p-values in the input order (None stays None and is not counted)."""
    present = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m = len(present)
    out: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(present):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


@dataclass(slots=True)
class Comparison:
    """Baseline vs candidate on one metric."""

    metric: str
    lower_is_better: bool
    n_baseline: int
    n_candidate: int
    median_baseline: float | None = None
    median_candidate: float | None = None
    change_pct: float | None = None
    diff_ci: Interval | None = None
    mann_whitney_u: float | None = None
    p_mann_whitney: float | None = None
    welch_t: float | None = None
    p_welch: float | None = None
    p_adjusted: float | None = None
    cohens_d: float | None = None
    effect: str | None = None
    mde_d: float | None = None
    mde_abs: float | None = None
    verdict: Verdict = "too few samples"

    def row(self) -> ComparisonRow:
        """The comparison as a result row."""
        return ComparisonRow(**{f.name: getattr(self, f.name) for f in fields(self)})


def compare(
    metric: str,
    baseline: Sequence[float] | np.ndarray,
    candidate: Sequence[float] | np.ndarray,
    *,
    lower_is_better: bool = True,
    alpha: float = 0.05,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> Comparison:
    """Tests and effect size for one metric; the verdict waits for :func:`compare_many` (Holm)."""
    a, b = _array(baseline), _array(candidate)
    c = Comparison(metric, lower_is_better, int(a.size), int(b.size))
    if a.size == 0 or b.size == 0:
        return c
    c.median_baseline, c.median_candidate = float(np.median(a)), float(np.median(b))
    if c.median_baseline:
        c.change_pct = (c.median_candidate / c.median_baseline - 1) * 100
    c.diff_ci = bootstrap_diff_ci(a, b, "median", resamples=resamples, seed=seed)
    if a.size < 2 or b.size < 2:
        return c
    if np.ptp(np.concatenate([a, b])) == 0:
        c.p_mann_whitney = c.p_welch = 1.0
    else:
        mw = sps.mannwhitneyu(b, a, alternative="two-sided")
        c.mann_whitney_u, c.p_mann_whitney = float(mw.statistic), float(mw.pvalue)
        if a.var() > 0 or b.var() > 0:
            wt = sps.ttest_ind(b, a, equal_var=False)
            c.welch_t, c.p_welch = float(wt.statistic), float(wt.pvalue)
    c.cohens_d = cohens_d(a, b)
    c.effect = effect_label(c.cohens_d)
    c.mde_d = min_detectable_d(a.size, b.size, alpha)
    pooled = _pooled_sd(a, b)
    c.mde_abs = c.mde_d * pooled if c.mde_d is not None and pooled is not None else None
    return c


def compare_many(comparisons: list[Comparison], alpha: float = 0.05) -> list[Comparison]:
    """Holm-adjust the Mann–Whitney p-values across ``comparisons`` and set each verdict."""
    adjusted = holm([c.p_mann_whitney for c in comparisons])
    for c, p in zip(comparisons, adjusted, strict=True):
        c.p_adjusted = p
        if p is None or c.median_baseline is None or c.median_candidate is None:
            c.verdict = "too few samples"
        elif p >= alpha or c.median_candidate == c.median_baseline:
            c.verdict = "no detectable change"
        else:
            higher = c.median_candidate > c.median_baseline
            c.verdict = "worse" if higher == c.lower_is_better else "better"
    return comparisons


def tost(
    baseline: Sequence[float] | np.ndarray, candidate: Sequence[float] | np.ndarray, margin: float
) -> float | None:
    """Two one-sided Welch tests that |mean candidate − mean baseline| < ``margin``: the larger p.

    Equivalence is shown when it is below alpha. None under two values a side or a zero margin.
    """
    a, b = _array(baseline), _array(candidate)
    if a.size < 2 or b.size < 2 or margin <= 0:
        return None
    if a.var() == 0 and b.var() == 0:
        return 0.0 if abs(b.mean() - a.mean()) < margin else 1.0
    above = sps.ttest_ind(b + margin, a, equal_var=False, alternative="greater")  # H0: diff ≤ −margin
    below = sps.ttest_ind(b - margin, a, equal_var=False, alternative="less")  # H0: diff ≥ +margin
    return float(max(above.pvalue, below.pvalue))


def anova(groups: Sequence[Sequence[float] | np.ndarray], *, min_groups: int = 3) -> Anova | None:
    """One-way ANOVA over ``min_groups``+ groups (F, p); None when a group has under two values."""
    arrays = [_array(g) for g in groups]
    if len(arrays) < min_groups or any(a.size < 2 for a in arrays):
        return None
    if all(a.var() == 0 for a in arrays):
        return None
    res = sps.f_oneway(*arrays)
    return Anova(f=float(res.statistic), p=float(res.pvalue), groups=len(arrays))


def geometric_mean(values: Sequence[float]) -> float | None:
    """Geometric mean of positive values (how ratios across scenarios are aggregated); None if any ≤ 0."""
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0 or np.any(arr <= 0) or not np.all(np.isfinite(arr)):
        return None
    return float(np.exp(np.log(arr).mean()))


def scaling_fit(
    x: Sequence[float], y: Sequence[float], *, min_r2: float = 0.2, level: float = 0.95
) -> Fit | None:
    """Least-squares y = a + b·x with the slope's CI; actionable only when R² ≥ 0.2 and the CI excludes 0.

    None when there are fewer than three points or x does not vary.
    """
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(xs) & np.isfinite(ys)
    xs, ys = xs[keep], ys[keep]
    if xs.size < 3 or np.ptp(xs) == 0:
        return None
    fit = sps.linregress(xs, ys)
    t = sps.t.ppf(1 - (1 - level) / 2, xs.size - 2)
    low, high = fit.slope - t * fit.stderr, fit.slope + t * fit.stderr
    r2 = float(fit.rvalue**2)
    return Fit(
        slope=float(fit.slope),
        intercept=float(fit.intercept),
        slope_ci=[float(low), float(high)],
        r2=r2,
        n=int(xs.size),
        actionable=bool(r2 >= min_r2 and (low > 0 or high < 0)),
    )
