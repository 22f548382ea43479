"""GPU power from another host: a DCGM exporter's series, or another infermeter daemon's GPU gauges.

A vLLM deployment is usually measured from a machine other than its GPUs' own, where NVML cannot
see them. NVIDIA's DCGM exporter serves each GPU's board power (``DCGM_FI_DEV_POWER_USAGE``, watts)
and its total-energy counter (``DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION``, millijoules since boot) on a
Prometheus endpoint; an infermeter daemon running beside the GPUs serves ``infermeter_gpu_power_watts``.
This source reads either, so the same baseline, counter-first and sample-count gates apply as with NVML.

Two things differ from NVML and are recorded. The exporter samples the GPU on its own period (DCGM's
default is 30 s; ``-c 1000`` gives 1 s), so a reading can be older than the scrape: a sample's time is
the scrape's midpoint, and ``describe`` keeps the scrape latency and how often the values changed, so
a window can be judged against both. And the counter moves only when the exporter refreshes it, so a
window shorter than the exporter's period has no counter bracket and falls back to the power samples.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Literal

from agent.core.errors import ConfigError
from agent.core.server_metrics import label_pairs, parse_exposition
from agent.energy.base import EnergyError, PowerSample
from agent.transport.scrape import fetch

__all__ = ["DCGM_ENERGY", "DCGM_POWER", "INFERMETER_POWER", "RemoteSource"]

DCGM_POWER = "DCGM_FI_DEV_POWER_USAGE"
DCGM_ENERGY = "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"
INFERMETER_POWER = "infermeter_gpu_power_watts"
#: the DCGM series read beside power, and the sample field each fills
_DCGM_DETAIL = {
    "DCGM_FI_DEV_GPU_UTIL": "util_pct",
    "DCGM_FI_DEV_FB_USED": "mem_used_mb",
    "DCGM_FI_DEV_GPU_TEMP": "temp_c",
    "DCGM_FI_DEV_SM_CLOCK": "sm_clock_mhz",
}
_KEEP_TIMES = 4096

Flavour = Literal["dcgm", "infermeter"]


class RemoteSource:
    """Power (and DCGM's energy counter) per GPU from a Prometheus endpoint on another host."""

    unavailable: str | None = None

    def __init__(self, url: str, flavour: Flavour, *, timeout_s: float = 2.0) -> None:
        self.url = url
        self.flavour: Flavour = flavour
        self.name: str = flavour
        self.timeout_s = timeout_s
        self._times_ms: list[float] = []
        self._changes = 0
        self._reads = 0
        self._last: dict[int, tuple[float | None, int | None]] = {}
        self._gpus: dict[int, dict[str, str]] = {}
        first = self._scrape()
        if not first:
            want = DCGM_POWER if flavour == "dcgm" else INFERMETER_POWER
            raise EnergyError(f"{url} serves no {want} series")
        self._gpus = {s.gpu: labels for s, labels in first}
        self._counter = [s.energy_mj is not None for s, _ in first]

    def _scrape(self) -> list[tuple[PowerSample, dict[str, str]]]:
        t0 = time.perf_counter_ns()
        try:
            samples = parse_exposition(fetch(self.url, self.timeout_s))
        except ConfigError as e:
            raise EnergyError(f"power from {self.url}: {e}") from None
        t1 = time.perf_counter_ns()
        if len(self._times_ms) < _KEEP_TIMES:
            self._times_ms.append((t1 - t0) / 1e6)
        stamp = (t0 + t1) // 2
        fields: dict[int, dict[str, Any]] = {}  # PowerSample's keyword arguments per GPU
        labels_of: dict[int, dict[str, str]] = {}
        power = DCGM_POWER if self.flavour == "dcgm" else INFERMETER_POWER
        for s in samples:
            labels = label_pairs(s.labels)
            if "gpu" not in labels:
                continue
            try:
                gpu = int(labels["gpu"])
            except ValueError:
                continue
            f = fields.setdefault(gpu, {})
            if s.name == power:
                f["power_w"] = s.value
                labels_of[gpu] = labels
            elif self.flavour == "dcgm" and s.name in (DCGM_ENERGY, DCGM_ENERGY + "_total"):
                f["energy_mj"] = int(s.value)
            elif self.flavour == "dcgm" and s.name in _DCGM_DETAIL:
                f[_DCGM_DETAIL[s.name]] = s.value
        return [
            (PowerSample(t_ns=stamp, gpu=g, **fields[g]), labels_of[g])
            for g in sorted(fields)
            if "power_w" in fields[g]
        ]

    def gpus(self) -> list[int]:
        """GPU indices this source reads."""
        return sorted(self._gpus)

    def read(self) -> list[PowerSample]:
        """One sample per GPU, stamped at the scrape's midpoint on the records' clock."""
        out = [s for s, _ in self._scrape()]
        self._reads += 1
        for s in out:
            now = (s.power_w, s.energy_mj)
            if self._last.get(s.gpu) != now:
                self._changes += 1
                self._last[s.gpu] = now
        return out

    def describe(self) -> dict[str, object]:
        """Manifest facts: the endpoint, each GPU's host and name, the counter, the scrape latency."""
        times = sorted(self._times_ms)
        gpus = [
            {
                "gpu": g,
                "host": labels.get("Hostname") or labels.get("instance"),
                "name": labels.get("modelName"),
                "uuid": labels.get("UUID"),
            }
            for g, labels in sorted(self._gpus.items())
        ]
        facts: dict[str, object] = {
            "source": self.name,
            "available": True,
            "url": self.url,
            "gpus": gpus,
            "energy_counter": self._counter,
        }
        if times:
            facts["scrape_ms_p50"] = round(statistics.median(times), 2)
            facts["scrape_ms_max"] = round(times[-1], 2)
        if self._reads:
            facts["fresh_readings_ratio"] = round(self._changes / (self._reads * max(1, len(self._gpus))), 3)
        return facts

    def close(self) -> None:
        """Nothing to release (each read is its own request); safe to call twice."""
        return None
