from __future__ import annotations

import itertools
import statistics

import pytest

from agent.core.arrivals import burstiness_of, geometric_series, schedule, trace_schedule


def take(it: object, n: int) -> list[float]:
    return list(itertools.islice(it, n))  # type: ignore[call-overload]


def test_constant_gaps_are_exact_and_start_at_zero() -> None:
    offsets = take(schedule("constant", 250.0), 1001)
    assert offsets[0] == 0.0
    assert offsets[-1] == pytest.approx(4.0)
    gaps = [b - a for a, b in itertools.pairwise(offsets)]
    assert max(gaps) == pytest.approx(min(gaps)) == pytest.approx(0.004)


@pytest.mark.parametrize("kind", ["poisson", "gamma"])
def test_random_schedules_are_seeded_and_hold_the_mean_rate(kind: str) -> None:
    a = take(schedule(kind, 50.0, burstiness=0.5, seed=3), 20_000)  # type: ignore[arg-type]
    b = take(schedule(kind, 50.0, burstiness=0.5, seed=3), 20_000)  # type: ignore[arg-type]
    c = take(schedule(kind, 50.0, burstiness=0.5, seed=4), 20_000)  # type: ignore[arg-type]
    assert a == b and a != c
    rate = (len(a) - 1) / a[-1]
    # 20,000 gaps: the sample mean's relative sd is 1/sqrt(20,000·k) ≤ 1 %; 5 % is > 5 sd
    assert rate == pytest.approx(50.0, rel=0.05)


@pytest.mark.parametrize(
    ("kind", "shape", "expected"), [("poisson", 1.0, 1.0), ("gamma", 0.25, 0.25), ("gamma", 4.0, 4.0)]
)
def test_burstiness_is_one_over_cv_squared(kind: str, shape: float, expected: float) -> None:
    offsets = take(schedule(kind, 10.0, burstiness=shape, seed=1), 40_000)  # type: ignore[arg-type]
    measured = burstiness_of(offsets)
    assert measured is not None and measured == pytest.approx(expected, rel=0.1)


def test_constant_schedule_has_no_measurable_burstiness() -> None:
    assert burstiness_of(take(schedule("constant", 10.0), 100)) is None
    assert burstiness_of([0.0, 1.0]) is None


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan")])
def test_bad_rates_and_shapes_are_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="rate"):
        next(schedule("poisson", bad))
    with pytest.raises(ValueError, match="burstiness"):
        next(schedule("gamma", 1.0, burstiness=bad))


def test_trace_schedule_starts_at_zero_scales_by_speed_and_refuses_going_back() -> None:
    assert list(trace_schedule([100.0, 101.0, 103.0], speed=2.0)) == [0.0, 0.5, 1.5]
    with pytest.raises(ValueError, match="back in time"):
        list(trace_schedule([1.0, 3.0, 2.0]))
    with pytest.raises(ValueError, match="speed"):
        list(trace_schedule([1.0], speed=0))


def test_geometric_series_includes_the_stop() -> None:
    assert geometric_series(1, 64) == [1, 2, 4, 8, 16, 32, 64]
    assert geometric_series(2, 20, 3) == [2, 6, 18]
    assert statistics.fmean(geometric_series(5, 5)) == 5
    with pytest.raises(ValueError):
        geometric_series(4, 2)


def test_a_constant_schedule_does_not_drift_over_many_sends() -> None:
    offsets = list(itertools.islice(schedule("constant", 10.0), 121))
    assert offsets[120] == 12.0 and sum(1 for o in offsets if o < 12.0) == 120
