from __future__ import annotations

from agent.core.scenario import Slo
from analysis.results import SweepPoint
from analysis.sweep import analyse, saturation

NONE = Slo()


def pt(load: float, thr: float, ttft95: float = 10.0) -> SweepPoint:
    return SweepPoint(
        stage=f"c={load:g}",
        load=load,
        throughput=thr,
        throughput_unit="output tok/s",
        ttft_ms_pslo=ttft95,
        e2e_ms_pslo=50.0,
    )


def test_knee_is_the_last_stage_that_still_bought_throughput() -> None:
    points = [pt(1, 100), pt(2, 190), pt(4, 350), pt(8, 360), pt(16, 340)]
    curve = analyse(points, NONE, min_gain=0.05)
    assert curve.knee.load == 4
    assert curve.saturated.stage == "c=8" and "throughput rose +2.9 %" in curve.saturated.why


def test_an_slo_breach_saturates_before_throughput_flattens() -> None:
    points = [pt(1, 100), pt(2, 200, ttft95=80), pt(4, 400, ttft95=300)]
    curve = analyse(points, Slo(ttft_ms=200, percentile=95), min_gain=0.05)
    assert curve.knee.load == 2 and "TTFT p95 300.0 ms > SLO 200 ms" in curve.saturated.why


def test_no_saturation_means_the_last_stage_is_the_knee_and_first_stage_breach_means_none() -> None:
    assert analyse([pt(1, 1), pt(2, 2)], NONE, 0.05).saturated is None
    assert analyse([pt(1, 1), pt(2, 2)], NONE, 0.05).knee.load == 2
    curve = analyse([pt(1, 1, ttft95=900)], Slo(ttft_ms=100), 0.05)
    assert curve.knee is None and curve.saturated.stage == "c=1"
    assert saturation([], NONE, 0.05) is None
