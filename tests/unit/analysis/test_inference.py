"""Statistics pinned against scipy and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from analysis import inference
from analysis.cost import SECONDS_PER_MONTH, cost_block, usd_per_million, workers_for
from analysis.inference import (
    anova,
    bootstrap_ci,
    bootstrap_diff_ci,
    cohens_d,
    compare,
    compare_many,
    effect_label,
    geometric_mean,
    holm,
    min_detectable_d,
    scaling_fit,
)


def test_bootstrap_ci_is_seeded_and_sized_right() -> None:
    rng = np.random.default_rng(7)
    values = rng.normal(100.0, 10.0, 400)
    a = bootstrap_ci(values, "mean", resamples=4000, seed=1)
    b = bootstrap_ci(values, "mean", resamples=4000, seed=1)
    assert a == b and a is not None
    assert a.low < values.mean() < a.high
    # the percentile interval of a mean is close to ±1.96 standard errors
    se = values.std(ddof=1) / math.sqrt(values.size)
    assert a.high - a.low == pytest.approx(2 * 1.96 * se, rel=0.12)
    ref = sps.bootstrap((values,), np.mean, n_resamples=4000, method="percentile", random_state=3)
    assert a.low == pytest.approx(ref.confidence_interval.low, rel=0.01)
    assert a.high == pytest.approx(ref.confidence_interval.high, rel=0.01)


def test_bootstrap_edges_and_blocks() -> None:
    assert bootstrap_ci([]) is None
    one = bootstrap_ci([5.0])
    assert one is not None and (one.low, one.estimate, one.high) == (5.0, 5.0, 5.0)
    # a sample larger than one resample block still resamples the requested number of times
    big = bootstrap_ci(np.arange(300_000, dtype=float), "median", resamples=200)
    assert big is not None and big.low < 150_000 < big.high
    diff = bootstrap_diff_ci([10.0] * 30, [12.0] * 30)
    assert diff is not None and (diff.estimate, diff.low, diff.high) == (2.0, 2.0, 2.0)


def test_cohens_d_and_labels() -> None:
    assert cohens_d([1, 2, 3], [2, 3, 4]) == pytest.approx(1.0)
    assert cohens_d([1, 1], [1, 1]) is None
    assert [effect_label(d) for d in (0.1, -0.3, 0.6, -2.0, None)] == [
        "negligible",
        "small",
        "medium",
        "large",
        None,
    ]


def test_holm_by_hand() -> None:
    # sorted 0.01, 0.03, 0.04 → ×3, ×2, ×1 = 0.03, 0.06, 0.04 → running max 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, None, 0.9]) == [pytest.approx(1.0), None, pytest.approx(1.0)]
    assert holm([]) == []


def test_min_detectable_effect_by_hand() -> None:
    z = 1.959964 + 0.841621
    assert min_detectable_d(50, 50) == pytest.approx(z * math.sqrt(2 / 50), rel=1e-5)
    assert min_detectable_d(1, 10) is None


def test_compare_matches_scipy_and_reads_direction() -> None:
    rng = np.random.default_rng(11)
    base = rng.lognormal(4.0, 0.3, 200)
    slower = base * 1.3 + rng.normal(0, 1, 200)
    c = compare("ttft_ms", base, slower)
    mw = sps.mannwhitneyu(slower, base, alternative="two-sided")
    welch = sps.ttest_ind(slower, base, equal_var=False)
    assert c.p_mann_whitney == pytest.approx(mw.pvalue)
    assert c.p_welch == pytest.approx(welch.pvalue)
    assert c.cohens_d == pytest.approx(cohens_d(base, slower))
    same = compare("e2e_ms", base, rng.permutation(base))
    faster_tok = compare("wall_tok_s", base, slower, lower_is_better=False)
    compare_many([c, same, faster_tok])
    assert c.verdict == "worse"
    assert same.verdict == "no detectable change"
    assert faster_tok.verdict == "better"
    assert c.p_adjusted is not None and c.p_adjusted >= c.p_mann_whitney  # type: ignore[operator]
    assert c.change_pct == pytest.approx((np.median(slower) / np.median(base) - 1) * 100)


def test_compare_small_or_constant_samples() -> None:
    tiny = compare("ttft_ms", [1.0], [2.0])
    flat = compare("ttft_ms", [3.0] * 5, [3.0] * 5)
    compare_many([tiny, flat])
    assert tiny.verdict == "too few samples"
    assert flat.verdict == "no detectable change" and flat.p_mann_whitney == 1.0


def test_anova_geomean_and_fits() -> None:
    groups = [[1.0, 2.0, 3.0], [2.0, 3.0, 4.0], [5.0, 6.0, 7.5]]
    res = anova(groups)
    ref = sps.f_oneway(*groups)
    assert res is not None and res.f == pytest.approx(ref.statistic) and res.p == pytest.approx(ref.pvalue)
    assert anova(groups[:2]) is None
    assert geometric_mean([1.0, 4.0]) == pytest.approx(2.0)
    assert geometric_mean([1.0, 0.0]) is None
    x = np.arange(20, dtype=float)
    fit = scaling_fit(x, 2 * x + 1 + np.random.default_rng(0).normal(0, 0.1, 20))
    assert fit is not None and fit.slope == pytest.approx(2.0, abs=0.02) and fit.actionable
    noise = scaling_fit(x, np.random.default_rng(1).normal(0, 1, 20))
    assert noise is not None and noise.actionable is False
    assert scaling_fit([1, 1, 1], [1, 2, 3]) is None


def test_cost_formulas_by_hand() -> None:
    # 100 tok/s → 10,000 s per 1M tokens → 2.78 h × $3.6 = $10
    assert usd_per_million(100.0, 3.6) == pytest.approx(10.0)
    # 2.592e9 tokens a month = 1,000 tok/s mean; at 100 tok/s per worker with burst 1.5 → 15 workers
    assert workers_for(2.592e9, 100.0, 1.5) == pytest.approx(15.0)
    assert SECONDS_PER_MONTH == 30 * 24 * 3600
    with pytest.raises(ValueError, match="positive"):
        usd_per_million(0.0, 1.0)
    block = cost_block(
        output_tok_s=50.0,
        total_tok_s=100.0,
        prompt_tokens_mean=200.0,
        output_tokens_mean=100.0,
        usd_per_hour=3.6,
        tokens_per_month=2.592e9,
        burst_factor=1.5,
        joules_per_token=0.36,
    )
    assert block is not None
    assert block.usd_per_1m_output_tokens == pytest.approx(20.0)
    assert block.usd_per_1m_tokens == pytest.approx(10.0)
    assert block.usd_per_request == pytest.approx(300 / 1e6 * 10.0)
    assert block.capacity.workers == pytest.approx(15.0) and block.capacity.workers_whole == 15
    assert block.kwh_per_1m_output_tokens == pytest.approx(0.1)
    assert (
        cost_block(
            output_tok_s=50.0,
            total_tok_s=None,
            prompt_tokens_mean=None,
            output_tokens_mean=None,
            usd_per_hour=None,
        )
        is None
    )


@pytest.mark.parametrize("n", [30_001, 30_000])
@pytest.mark.parametrize("rounded", [False, True])
def test_drawn_resample_statistics_are_the_bootstraps(n: int, rounded: bool) -> None:
    """Past ``DRAWN_ABOVE`` values a resample's median (or mean) is drawn from its distribution: its
    interval is the one resampling gives, within the resampling's own error."""
    data = np.random.default_rng(3).gamma(2, 5, n)
    data = np.round(data, 1) if rounded else data
    for statistic in ("median", "mean"):
        drawn = bootstrap_ci(data, statistic, resamples=4000, seed=1)
        old = inference.DRAWN_ABOVE
        inference.DRAWN_ABOVE = 10**9
        try:
            resampled = bootstrap_ci(data, statistic, resamples=4000, seed=1)
        finally:
            inference.DRAWN_ABOVE = old
        assert drawn is not None and resampled is not None
        width = resampled.high - resampled.low
        assert drawn.estimate == resampled.estimate
        assert abs(drawn.low - resampled.low) <= 0.15 * width + 0.1 * rounded
        assert abs(drawn.high - resampled.high) <= 0.15 * width + 0.1 * rounded
