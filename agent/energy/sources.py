"""The three power sources: NVML (real GPUs), a recorded trace replayed on a virtual clock, and null."""

from __future__ import annotations

import csv
import functools
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import structlog

from agent.energy.base import EnergyError, PowerSample
from agent.energy.remote import RemoteSource

__all__ = ["NullSource", "NvmlSource", "ReplaySource", "open_source"]

logger = structlog.get_logger(__name__)

T = TypeVar("T")

#: how often NVML's utilisation, memory, temperature and clock are read (power is read on every tick)
DETAIL_EVERY_NS = 1_000_000_000


class NullSource:
    """No GPU, or no NVML: reads nothing and says why. Zeros are never presented as measurements."""

    name = "null"

    def __init__(self, reason: str) -> None:
        self.unavailable: str | None = reason

    def gpus(self) -> list[int]:
        """GPU indices this source reads."""
        return []

    def read(self) -> list[PowerSample]:
        """One sample per GPU (per trace tick, for a replay)."""
        return []

    def describe(self) -> dict[str, object]:
        """Manifest facts about the source."""
        return {"source": self.name, "available": False, "reason": self.unavailable}

    def close(self) -> None:
        """Release the source; safe to call twice."""
        return None


def _nvml_errors(fn: Callable[..., T]) -> Callable[..., T]:
    """Translate pynvml's errors into EnergyError once, here at the boundary."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        import pynvml

        try:
            return fn(*args, **kwargs)
        except pynvml.NVMLError as e:
            raise EnergyError(f"NVML: {e}") from e

    return wrapper


class NvmlSource:
    """Every visible GPU through nvidia-ml-py: power (mW), total energy (mJ) where supported, and state."""

    name = "nvml"
    unavailable: str | None = None

    @_nvml_errors
    def __init__(self) -> None:
        import pynvml

        self._nvml = pynvml
        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        self._names = [str(pynvml.nvmlDeviceGetName(h)) for h in self._handles]
        self._counter = [self._has_counter(h) for h in self._handles]
        self._closed = False
        #: utilisation, memory, temperature and clock per GPU, read at most every DETAIL_EVERY_NS
        self._detail: list[dict[str, float]] = [{} for _ in self._handles]
        self._detail_ns = -DETAIL_EVERY_NS

    def _has_counter(self, handle: Any) -> bool:
        try:
            self._nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
            return True
        except self._nvml.NVMLError:
            return False  # before Volta, or not exposed

    def gpus(self) -> list[int]:
        """GPU indices this source reads."""
        return list(range(len(self._handles)))

    @_nvml_errors
    def read(self) -> list[PowerSample]:
        """One sample per GPU: power and the energy counter now, the slower facts as of the last second.

        On an H100 a tick that read all six values cost 3.6 ms of the poller thread's CPU time, and the
        poller runs every 20–100 ms beside the work it measures, so only what energy needs is read on
        every tick.
        """
        n = self._nvml
        now = time.perf_counter_ns()
        if now - self._detail_ns >= DETAIL_EVERY_NS:
            self._detail_ns = now
            self._detail = [self._read_detail(h) for h in self._handles]
        out = []
        for i, h in enumerate(self._handles):
            t = time.perf_counter_ns()
            d = self._detail[i]
            out.append(
                PowerSample(
                    t_ns=t,
                    gpu=i,
                    power_w=n.nvmlDeviceGetPowerUsage(h) / 1000,
                    energy_mj=int(n.nvmlDeviceGetTotalEnergyConsumption(h)) if self._counter[i] else None,
                    util_pct=d["util_pct"],
                    mem_used_mb=d["mem_used_mb"],
                    mem_total_mb=d["mem_total_mb"],
                    temp_c=d["temp_c"],
                    sm_clock_mhz=d["sm_clock_mhz"],
                )
            )
        return out

    def _read_detail(self, h: Any) -> dict[str, float]:
        n = self._nvml
        mem = n.nvmlDeviceGetMemoryInfo(h)
        return {
            "util_pct": float(n.nvmlDeviceGetUtilizationRates(h).gpu),
            "mem_used_mb": mem.used / 2**20,
            "mem_total_mb": mem.total / 2**20,
            "temp_c": float(n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU)),
            "sm_clock_mhz": float(n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM)),
        }

    def describe(self) -> dict[str, object]:
        """Manifest facts about the source."""
        return {"source": self.name, "available": True, "gpus": self._names, "energy_counter": self._counter}

    def close(self) -> None:
        """Release the source; safe to call twice."""
        if not self._closed:
            self._closed = True
            try:
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError as e:
                logger.debug("NVML shutdown failed", error=str(e))


class ReplaySource:
    """A recorded CSV (``timestamp_s,gpu,power_w[,energy_mj,util_pct,mem_used_mb,mem_total_mb,temp_c]``).

    ``samples(origin_ns)`` places the whole trace on a clock starting at ``origin_ns``, for tests and for
    re-analysing a recorded run. ``read()`` plays it live: the trace's first tick lands at the first
    read, and each read returns the ticks whose time has come, stamped on the records' clock.
    """

    name = "replay"
    unavailable: str | None = None

    def __init__(
        self, path: Path, *, origin_ns: int = 0, clock: Callable[[], int] = time.perf_counter_ns
    ) -> None:
        self.path = path
        self._clock = clock
        self._start: int | None = None
        try:
            with path.open(newline="", encoding="utf-8") as fh:
                rows = list(csv.DictReader(fh))
        except OSError as e:
            raise EnergyError(f"cannot read power trace {path}: {e.strerror or e}") from e
        if not rows or not {"timestamp_s", "gpu", "power_w"} <= set(rows[0]):
            raise EnergyError(f"power trace {path} needs the columns timestamp_s, gpu, power_w")
        try:
            self._rows = [_row(r) for r in rows]
        except ValueError as e:
            raise EnergyError(f"power trace {path}: {e}") from e
        self._origin = origin_ns
        self._ticks = sorted({t for t, _ in self._rows})
        self._by_tick: dict[int, list[PowerSample]] = {}
        for t, sample in self._rows:
            self._by_tick.setdefault(t, []).append(sample)
        self._next = 0

    def samples(self, origin_ns: int | None = None) -> list[PowerSample]:
        """Every sample, timestamps shifted so the trace's zero is ``origin_ns``."""
        origin = self._origin if origin_ns is None else origin_ns
        return [_shift(s, origin) for _, s in self._rows]

    def gpus(self) -> list[int]:
        """GPU indices this source reads."""
        return sorted({s.gpu for _, s in self._rows})

    def read(self) -> list[PowerSample]:
        """One sample per GPU (per trace tick, for a replay)."""
        now = self._clock()
        if self._start is None:
            self._start = now
        first = self._ticks[0]
        out: list[PowerSample] = []
        while self._next < len(self._ticks) and self._ticks[self._next] - first <= now - self._start:
            out += [_shift(s, self._start - first) for s in self._by_tick[self._ticks[self._next]]]
            self._next += 1
        return out

    def describe(self) -> dict[str, object]:
        """Manifest facts about the source."""
        return {"source": self.name, "available": True, "trace": str(self.path), "gpus": self.gpus()}

    def close(self) -> None:
        """Release the source; safe to call twice."""
        return None


def _opt(row: dict[str, str], key: str) -> float | None:
    value = (row.get(key) or "").strip()
    return float(value) if value else None


def _row(r: dict[str, str]) -> tuple[int, PowerSample]:
    t_ns = round(float(r["timestamp_s"]) * 1e9)
    energy = _opt(r, "energy_mj")
    return t_ns, PowerSample(
        t_ns=t_ns,
        gpu=int(r["gpu"]),
        power_w=_opt(r, "power_w"),
        energy_mj=int(energy) if energy is not None else None,
        util_pct=_opt(r, "util_pct"),
        mem_used_mb=_opt(r, "mem_used_mb"),
        mem_total_mb=_opt(r, "mem_total_mb"),
        temp_c=_opt(r, "temp_c"),
    )


def _shift(s: PowerSample, origin_ns: int) -> PowerSample:
    return replace(s, t_ns=s.t_ns + origin_ns)


def open_source(spec: str) -> NullSource | NvmlSource | ReplaySource | RemoteSource:
    """The power source a ``--energy`` value names.

    ``auto`` (NVML when it loads, else null with the reason), ``nvml``, ``off``, ``replay:PATH``,
    ``dcgm:URL`` (a DCGM exporter) or ``infermeter:URL`` (another infermeter's metrics endpoint).
    """
    if spec == "off":
        return NullSource("energy measurement turned off (--energy off)")
    if spec.startswith("replay:"):
        return ReplaySource(Path(spec.removeprefix("replay:")))
    for flavour in ("dcgm", "infermeter"):
        if spec.startswith(flavour + ":"):
            url = spec.removeprefix(flavour + ":")
            if not url.startswith(("http://", "https://")):
                raise EnergyError(
                    f"--energy {flavour}: needs an http(s) URL of a metrics endpoint, got {url!r}"
                )
            return RemoteSource(url, "dcgm" if flavour == "dcgm" else "infermeter")
    if spec not in ("auto", "nvml"):
        raise EnergyError(
            f"unknown energy source {spec!r}; use auto, nvml, off, replay:PATH, dcgm:URL or infermeter:URL"
        )
    try:
        import pynvml  # noqa: F401 - only probing whether the library is installed
    except ImportError:
        reason = "NVML not found (nvidia-ml-py is not installed)"
        if spec == "nvml":
            raise EnergyError(reason) from None
        return NullSource(reason)
    try:
        source = NvmlSource()
    except EnergyError as e:
        if spec == "nvml":
            raise
        return NullSource(f"NVML not found ({e})")
    if not source.gpus():
        source.close()
        return NullSource("NVML found no GPU")
    return source
