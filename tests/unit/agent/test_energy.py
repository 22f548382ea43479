"""Energy gating on replayed power traces (method §5): the sensor reports only what it can see."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent.energy.base import COUNTER_WRAP_MJ, Baseline, EnergyError, PowerSample, baseline_from, window
from agent.energy.meter import EnergyMeter, PowerPoller
from agent.energy.sources import NullSource, ReplaySource, open_source

MS = 1_000_000
IDLE = Baseline(mean_w=20.0, sd_w=1.0, n=100)


def trace(tmp_path: Path, rows: list[str]) -> ReplaySource:
    path = tmp_path / "power.csv"
    path.write_text("timestamp_s,gpu,power_w,energy_mj\n" + "\n".join(rows) + "\n")
    return ReplaySource(path)


def polled(power_w: float, *, every_ms: int = 100, until_ms: int = 2000, gpu: int = 0) -> list[PowerSample]:
    return [PowerSample(t * MS, gpu, power_w) for t in range(0, until_ms + 1, every_ms)]


def test_an_event_shorter_than_the_poll_period_has_no_data() -> None:
    w = window(polled(150.0), 1020 * MS, 1080 * MS, IDLE, interval_s=0.1)  # a 60 ms prefill
    assert (w.quality, w.n, w.energy_j) == ("no_data", 0, None)


def test_exactly_two_samples_in_window_are_enough() -> None:
    w = window(polled(150.0), 950 * MS, 1150 * MS, IDLE, interval_s=0.1)  # samples at 1000 and 1100 ms
    assert w.quality == "good" and w.n == 2
    assert w.delta_power_w == pytest.approx(130.0)
    assert w.energy_j == pytest.approx(130.0 * 0.2)


def test_one_sample_is_not_enough() -> None:
    w = window(polled(150.0), 950 * MS, 1050 * MS, IDLE, interval_s=0.1)
    assert w.quality == "no_data" and w.n == 1 and w.energy_j is None


def test_a_gap_inside_the_window_is_flagged() -> None:
    samples = [s for s in polled(150.0) if not 1200 * MS <= s.t_ns <= 1500 * MS]  # 400 ms without a sample
    w = window(samples, 1000 * MS, 1900 * MS, IDLE, interval_s=0.1)
    assert w.quality == "good" and "gap" in w.flags
    assert "gap" not in window(polled(150.0), 1000 * MS, 1900 * MS, IDLE, interval_s=0.1).flags


def test_a_baseline_above_the_window_mean_clamps_to_zero_and_says_so() -> None:
    w = window(polled(18.0), 500 * MS, 1500 * MS, IDLE, interval_s=0.1)
    assert w.quality == "good" and w.energy_j == 0.0 and w.delta_power_w == 0.0
    assert "below_baseline" in w.flags


def test_multi_gpu_power_adds_up_per_tick() -> None:
    samples = sorted(polled(100.0, gpu=0) + polled(50.0, gpu=1), key=lambda s: (s.t_ns, s.gpu))
    w = window(samples, 500 * MS, 1500 * MS, IDLE, interval_s=0.1)
    assert w.mean_power_w == pytest.approx(150.0) and w.n == 11


def counted(power_w: float, *, start_mj: int = 0, every_ms: int = 100) -> list[PowerSample]:
    out, energy = [], start_mj
    for t in range(0, 2001, every_ms):
        out.append(PowerSample(t * MS, 0, power_w, energy % COUNTER_WRAP_MJ))
        energy += int(power_w * every_ms)  # W × ms = mJ
    return out


def test_the_counter_measures_events_the_poller_cannot_see() -> None:
    w = window(counted(150.0), 1000 * MS, 1080 * MS, IDLE, interval_s=0.1)  # bracket 1000..1100 ms
    assert w.quality == "counter" and w.n == 1
    assert w.energy_j == pytest.approx((150.0 - 20.0) * 0.08)


def test_a_bracket_much_wider_than_the_event_is_not_a_measurement() -> None:
    w = window(counted(150.0, every_ms=500), 1010 * MS, 1070 * MS, IDLE, interval_s=0.5)
    assert w.quality == "no_data"


def test_the_counter_survives_wrap_around() -> None:
    start = COUNTER_WRAP_MJ - 20_000  # wraps after ~133 ms at 150 W
    w = window(counted(150.0, start_mj=start), 100 * MS, 180 * MS, IDLE, interval_s=0.1)
    assert w.quality == "counter" and "counter_wrapped" in w.flags
    assert w.energy_j == pytest.approx((150.0 - 20.0) * 0.08)


def test_counter_and_polling_agree_on_a_long_window() -> None:
    samples = counted(173.0)
    polled_w = window(polled(173.0), 200 * MS, 1800 * MS, IDLE, interval_s=0.1)
    inner = [s for s in samples if not 200 * MS <= s.t_ns <= 1800 * MS] + [
        PowerSample(1000 * MS, 0, None, None)
    ]
    by_counter = window(sorted(inner, key=lambda s: s.t_ns), 250 * MS, 1750 * MS, IDLE, interval_s=2.0)
    assert polled_w.quality == "good"
    assert polled_w.energy_j == pytest.approx(153.0 * 1.6, rel=1e-9)
    assert by_counter.quality == "counter"
    assert by_counter.energy_j / 1.5 == pytest.approx(polled_w.energy_j / 1.6, rel=0.01)


def test_a_step_at_the_edges_of_a_long_window_costs_at_most_part_of_an_interval() -> None:
    """A GPU steps from 50 W to 250 W and back between two readings 100 ms apart.

    The window gets the readings inside it whole and only its share of the two edge intervals, so the
    50 W outside the window is not spread over it (spreading the whole bracket evenly reads 10 % low).
    """
    samples, energy = [], 0.0
    on, off = 1030, 1830  # ms
    for t in range(0, 3001):  # the counter integrates each millisecond exactly
        if t % 100 == 0:
            samples.append(PowerSample(t * MS, 0, None, int(energy)))
        energy += 250.0 if on <= t < off else 50.0
    w = window(samples, on * MS, off * MS, IDLE, interval_s=0.1)
    assert w.quality == "counter"
    exact = (250.0 - 20.0) * 0.8
    # a step at fraction f of an interval misplaces (250 - 50) W x 100 ms x f(1 - f): a quarter at most
    worst = 2 * (250.0 - 50.0) * 0.1 / 4
    assert abs(w.energy_j - exact) <= worst
    spread = ((samples[19].energy_mj - samples[10].energy_mj) / 1000 / 0.9 - 20.0) * 0.8  # type: ignore[operator]
    assert abs(w.energy_j - exact) < abs(spread - exact) / 2


def test_the_counter_wins_over_an_averaged_power_reading() -> None:
    """A burst the power reading smooths away (NVML averages power over about 1 s on an H100).

    The counter integrates 300 W over the burst while the power readings still say 100 W: the counter's
    figure is the one reported, and its mean power is the one the counter implies.
    """
    samples, energy = [], 0
    for t in range(0, 2001, 20):
        burst = 1000 <= t < 1400
        samples.append(PowerSample(t * MS, 0, 100.0, energy))
        energy += int((300.0 if burst else 100.0) * 20)
    w = window(samples, 1000 * MS, 1400 * MS, IDLE, interval_s=0.02)
    assert w.quality == "counter" and w.n >= 2
    assert w.mean_power_w == pytest.approx(300.0) and w.energy_j == pytest.approx((300.0 - 20.0) * 0.4)
    no_counter = [PowerSample(s.t_ns, 0, s.power_w) for s in samples]
    assert window(no_counter, 1000 * MS, 1400 * MS, IDLE, interval_s=0.02).quality == "good"


def test_a_baseline_comes_from_idle_samples_and_needs_two() -> None:
    b = baseline_from([PowerSample(0, 0, 19.0), PowerSample(1, 0, 21.0)], "replay")
    assert (b.mean_w, b.n) == (20.0, 2) and b.sd_w == pytest.approx(2**0.5)
    with pytest.raises(EnergyError, match="at least 2"):
        baseline_from([PowerSample(0, 0, 19.0)])


def test_replay_reads_a_recorded_trace_onto_a_virtual_clock(tmp_path: Path) -> None:
    src = trace(tmp_path, ["0.0,0,100,0", "0.1,0,110,10000", "0.1,1,50,", "0.2,0,120,21000"])
    assert src.gpus() == [0, 1]
    samples = src.samples(origin_ns=5 * 10**9)
    assert samples[0].t_ns == 5 * 10**9 and samples[1].energy_mj == 10000 and samples[2].energy_mj is None
    clock = iter([7_000, 7_000 + 150 * MS, 7_000 + 150 * MS, 7_000 + 10**9])
    live = ReplaySource(src.path, clock=lambda: next(clock))  # played live: ticks as their time comes
    assert [[x.t_ns for x in live.read()] for _ in range(4)] == [
        [7_000],
        [7_000 + 100 * MS] * 2,
        [],
        [7_000 + 200 * MS],
    ]


def test_a_bad_trace_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("time,watts\n1,2\n")
    with pytest.raises(EnergyError, match="needs the columns timestamp_s, gpu, power_w"):
        ReplaySource(bad)
    with pytest.raises(EnergyError, match="cannot read power trace"):
        ReplaySource(tmp_path / "missing.csv")
    with pytest.raises(EnergyError, match="power trace"):
        trace(tmp_path, ["zero,0,100,"])


def test_no_gpu_means_unavailable_with_a_reason_never_zeros() -> None:
    source = open_source("auto")  # this machine has no GPU
    assert isinstance(source, NullSource) and source.unavailable and "NVML" in source.unavailable
    meter = EnergyMeter(source)
    meter.start()
    assert meter.unavailable == source.unavailable
    assert meter.request_fields(0, 10, 20) == {} and meter.window(0, 10) is None
    assert meter.describe()["status"].startswith("unavailable — NVML")
    meter.stop()
    with pytest.raises(EnergyError, match="unknown energy source"):
        open_source("gpu")


class Ticking:
    """A source stamping one GPU's constant power at read time."""

    name = "ticking"
    unavailable = None

    def gpus(self) -> list[int]:
        return [0]

    def read(self) -> list[PowerSample]:
        return [PowerSample(time.perf_counter_ns(), 0, 120.0, None)]

    def describe(self) -> dict[str, object]:
        return {"source": self.name}

    def close(self) -> None:
        return None


def test_the_poller_keeps_its_period_and_feeds_the_meter() -> None:
    meter = EnergyMeter(Ticking(), interval_s=0.01, baseline=IDLE)
    start = time.perf_counter_ns()
    meter.start()
    time.sleep(0.3)
    end = time.perf_counter_ns()
    deadline = time.monotonic() + 2
    while not meter.ready(end) and time.monotonic() < deadline:
        time.sleep(0.005)
    meter.stop()
    q = meter.poller.quality()
    assert q["ticks"] >= 10 and q["period_ms_p50"] == pytest.approx(10, abs=5)
    fields = meter.request_fields(start, start + 100 * MS, end)
    assert fields["energy_quality"] == "good" and fields["power_delta_w"] == pytest.approx(100.0)
    assert fields["decode_energy_quality"] == "good" and fields["prefill_energy_j"] is not None


def test_a_poller_over_a_source_without_gpus_never_starts() -> None:
    poller = PowerPoller(NullSource("no GPU"), 0.01)
    poller.start()
    assert poller._thread is None and poller.latest_ns() is None
    poller.stop()
