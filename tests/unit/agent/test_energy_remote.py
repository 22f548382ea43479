"""GPU power from another host: a labelled stand-in DCGM exporter (DCGM's real series names and labels,
its counter in millijoules since boot) replaying a power trace on loopback,
and another infermeter's GPU gauge. The same baseline, counter-first and gate rules as NVML apply."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator

import pytest

from agent.energy.base import Baseline, EnergyError
from agent.energy.meter import EnergyMeter
from agent.energy.remote import RemoteSource
from agent.energy.sources import open_source
from tests.standin_http import serving


class StandInExporter:
    """NOT a DCGM exporter: serves its series from a power trace set by the test, two GPUs, on loopback.

    GPU 0 steps from 50 W to 250 W and back when the test says; the energy counter is the exact
    integral of what was drawn, in millijoules, as of each answer.
    """

    def __init__(self, flavour: str = "dcgm") -> None:
        self.flavour = flavour
        self.power = [50.0, 40.0]
        self.energy_mj = [1.0e9, 2.0e9]
        self.lock = threading.Lock()
        self.last = time.perf_counter()

    def _integrate(self) -> None:
        now = time.perf_counter()
        for g, p in enumerate(self.power):
            self.energy_mj[g] += p * (now - self.last) * 1000
        self.last = now

    def set_power(self, gpu: int, watts: float) -> int:
        """Switch a GPU's draw; returns the moment on the records' clock."""
        with self.lock:
            self._integrate()
            self.power[gpu] = watts
            return time.perf_counter_ns()

    def body(self) -> str:
        with self.lock:
            self._integrate()
            power, energy = list(self.power), list(self.energy_mj)
        if self.flavour == "infermeter":
            lines = ["# TYPE infermeter_gpu_power_watts gauge"]
            lines += [f'infermeter_gpu_power_watts{{gpu="{g}"}} {p}' for g, p in enumerate(power)]
            return "\n".join(lines) + "\n"
        labels = [
            f'gpu="{g}",UUID="GPU-standin-{g}",device="nvidia{g}",modelName="Stand-in H100",'
            'Hostname="gpu-host-1"'
            for g in range(2)
        ]
        out = ["# HELP DCGM_FI_DEV_POWER_USAGE Power draw (in W).", "# TYPE DCGM_FI_DEV_POWER_USAGE gauge"]
        out += [f"DCGM_FI_DEV_POWER_USAGE{{{lab}}} {p:.3f}" for lab, p in zip(labels, power, strict=True)]
        out += [
            "# HELP DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION Total energy consumption since boot (in mJ).",
            "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter",
        ]
        out += [
            f"DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{{{lab}}} {int(e)}"
            for lab, e in zip(labels, energy, strict=True)
        ]
        out += ["# TYPE DCGM_FI_DEV_GPU_UTIL gauge"] + [f"DCGM_FI_DEV_GPU_UTIL{{{lab}}} 87" for lab in labels]
        return "\n".join(out) + "\n"


@pytest.fixture(params=["dcgm", "infermeter"])
def exporter(request: pytest.FixtureRequest) -> Iterator[tuple[str, StandInExporter]]:
    standin = StandInExporter(request.param)
    with serving(lambda: (200, standin.body())) as url:
        yield url, standin


def test_a_remote_window_measures_what_the_gpu_drew(exporter: tuple[str, StandInExporter]) -> None:
    url, standin = exporter
    source = open_source(f"{standin.flavour}:{url}")
    assert isinstance(source, RemoteSource) and source.gpus() == [0, 1]
    meter = EnergyMeter(source, interval_s=0.05, baseline=Baseline(90.0, 0.5, 100, standin.flavour))
    meter.start()
    try:
        time.sleep(0.3)
        on = standin.set_power(0, 250.0)
        time.sleep(0.8)
        off = standin.set_power(0, 50.0)
        time.sleep(0.3)
        deadline = time.monotonic() + 5
        while not meter.ready(off) and time.monotonic() < deadline:
            time.sleep(0.02)
        w = meter.window(on, off)
        samples = [s for s in meter.poller.between(0, 2**63 - 1) if s.gpu == 0]
    finally:
        meter.stop()
    assert w is not None
    seconds = (off - on) / 1e9
    expected = (250.0 + 40.0 - 90.0) * seconds  # both GPUs over the two-GPU baseline
    # Each edge of the step can be off by what the machine allowed: half the widest gap between the
    # samples that bracket it (the counter is interpolated across it) plus half the slowest scrape.
    facts = source.describe()
    gap_s = max(b.t_ns - a.t_ns for a, b in itertools.pairwise(samples)) / 1e9
    edge_j = 200.0 * (gap_s / 2 + facts["scrape_ms_max"] / 2000)
    assert w.energy_j == pytest.approx(expected, rel=0.03, abs=2 * edge_j), (w, expected, gap_s, facts)
    assert w.quality == ("counter" if standin.flavour == "dcgm" else "good")
    assert facts["scrape_ms_p50"] >= 0 and facts["url"] == url
    if standin.flavour == "dcgm":
        assert facts["energy_counter"] == [True, True]
        assert facts["gpus"][0] == {
            "gpu": 0,
            "host": "gpu-host-1",
            "name": "Stand-in H100",
            "uuid": "GPU-standin-0",
        }
        assert source.read()[0].util_pct == 87


def test_an_endpoint_without_the_series_is_one_clear_error(exporter: tuple[str, StandInExporter]) -> None:
    url, standin = exporter
    other = "infermeter" if standin.flavour == "dcgm" else "dcgm"
    with pytest.raises(EnergyError, match="serves no"):
        open_source(f"{other}:{url}")
    with pytest.raises(EnergyError, match="could not be read"):
        open_source("dcgm:http://127.0.0.1:9/metrics")
    with pytest.raises(EnergyError, match="needs an http"):
        open_source("dcgm:gpu-host:9400")
