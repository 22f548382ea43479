"""Power sources, idle baselines and energy windows gated by what the samples can actually see.

A poller every Δt cannot see an event shorter than Δt, and idle power is noisy. So an energy window
reports a figure only when the hardware energy counter brackets it closely (``counter``, preferred) or,
without a counter, when at least two power samples fall inside it (``good``); otherwise ``no_data``,
excluded from every aggregate. The counter comes first because a power reading may be an average: on an
H100, polled power over a sub-second burst of batched prefills gave 38–64 % of the energy the counter
integrated, while the two agreed within 0.2 % over a minute of decoding. Energy is the window's mean
power minus the idle baseline, times its duration; a baseline above that mean is clamped to zero and
flagged, never turned into negative joules.
"""

from __future__ import annotations

import bisect
import itertools
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from agent.core.errors import InfermeterError

__all__ = [
    "COUNTER_WRAP_MJ",
    "Baseline",
    "EnergyError",
    "EnergyWindow",
    "PowerSample",
    "PowerSource",
    "Quality",
    "baseline_from",
    "totals",
    "window",
]

#: NVML's total-energy counter is an unsigned 64-bit count of millijoules.
COUNTER_WRAP_MJ = 2**64

Quality = Literal["good", "no_data", "counter"]


class EnergyError(InfermeterError):
    """A power source failed (NVML errors are translated into this once, at the boundary)."""


@dataclass(frozen=True, slots=True)
class PowerSample:
    """One reading of one GPU at ``t_ns`` (``time.perf_counter_ns()``, the records' clock)."""

    t_ns: int
    gpu: int
    power_w: float | None
    energy_mj: int | None = None
    util_pct: float | None = None
    mem_used_mb: float | None = None
    mem_total_mb: float | None = None
    temp_c: float | None = None
    sm_clock_mhz: float | None = None


class PowerSource(Protocol):
    """Where samples come from: NVML, a recorded trace, or nothing (with the reason)."""

    name: str
    #: why energy is unavailable, or None when the source can measure
    unavailable: str | None

    def gpus(self) -> list[int]:
        """GPU indices this source reads (empty when unavailable)."""

    def read(self) -> list[PowerSample]:
        """One sample per GPU, stamped now."""

    def describe(self) -> dict[str, object]:
        """Manifest facts: device names, whether an energy counter exists."""

    def close(self) -> None:
        """Release the source; safe to call twice."""


@dataclass(frozen=True, slots=True)
class Baseline:
    """Idle power of all GPUs together: mean, standard deviation, sample count."""

    mean_w: float
    sd_w: float
    n: int
    source: str = ""

    def to_dict(self) -> dict[str, object]:
        """For the manifest and the calibration file."""
        return {"mean_w": self.mean_w, "sd_w": self.sd_w, "n": self.n, "source": self.source}


@dataclass(frozen=True, slots=True)
class EnergyWindow:
    """What the samples say about ``[start_ns, end_ns]``; ``energy_j`` is None unless quality allows."""

    start_ns: int
    end_ns: int
    n: int
    quality: Quality
    mean_power_w: float | None = None
    delta_power_w: float | None = None
    energy_j: float | None = None
    flags: tuple[str, ...] = field(default=())

    @property
    def duration_s(self) -> float:
        """Window length in seconds."""
        return (self.end_ns - self.start_ns) / 1e9


def totals(samples: Sequence[PowerSample]) -> list[tuple[int, float | None, int | None]]:
    """Per poll tick: (time, summed power over GPUs, summed energy counter) — ticks share a timestamp."""
    ticks: dict[int, list[PowerSample]] = {}
    for s in samples:
        ticks.setdefault(s.t_ns, []).append(s)
    out = []
    for t in sorted(ticks):
        group = ticks[t]
        powers = [s.power_w for s in group]
        counters = [s.energy_mj for s in group]
        power = None if any(p is None for p in powers) else math.fsum(p for p in powers if p is not None)
        counter = None if any(c is None for c in counters) else sum(c for c in counters if c is not None)
        out.append((t, power, counter))
    return out


def baseline_from(samples: Sequence[PowerSample], source: str = "") -> Baseline:
    """Idle baseline from samples taken with no load; needs at least two ticks with power."""
    powers = [p for _, p, _ in totals(samples) if p is not None]
    if len(powers) < 2:
        raise EnergyError(f"an idle baseline needs at least 2 power samples, got {len(powers)}")
    return Baseline(statistics.fmean(powers), statistics.stdev(powers), len(powers), source)


def window(
    samples: Sequence[PowerSample],
    start_ns: int,
    end_ns: int,
    baseline: Baseline,
    *,
    interval_s: float,
    wrap_mj: int = COUNTER_WRAP_MJ,
) -> EnergyWindow:
    """The energy of ``[start_ns, end_ns]`` over the baseline, gated by sample coverage (method §5).

    ``samples`` may extend beyond the window (the counter method needs one sample on each side).
    """
    if end_ns <= start_ns:
        return EnergyWindow(start_ns, end_ns, 0, "no_data", flags=("empty_window",))
    ticks = totals(samples)
    inside = [(t, p) for t, p, _ in ticks if start_ns <= t <= end_ns and p is not None]
    duration_s = (end_ns - start_ns) / 1e9
    flags: list[str] = []
    gap_ns = 2 * interval_s * 1e9
    edges = [start_ns, *(t for t, _ in inside), end_ns]
    if any(b - a > gap_ns for a, b in itertools.pairwise(edges)):
        flags.append("gap")
    counted = _by_counter(ticks, start_ns, end_ns, baseline, wrap_mj, flags)
    if counted is not None:
        energy, mean = counted
        return EnergyWindow(
            start_ns, end_ns, len(inside), "counter", mean, energy / duration_s, energy, tuple(flags)
        )
    if len(inside) >= 2:
        mean = statistics.fmean(p for _, p in inside)
        delta = mean - baseline.mean_w
        if delta < 0:
            flags.append("below_baseline")
            delta = 0.0
        return EnergyWindow(
            start_ns, end_ns, len(inside), "good", mean, delta, delta * duration_s, tuple(flags)
        )
    return EnergyWindow(start_ns, end_ns, len(inside), "no_data", flags=tuple(flags))


def _by_counter(
    ticks: list[tuple[int, float | None, int | None]],
    start_ns: int,
    end_ns: int,
    baseline: Baseline,
    wrap_mj: int,
    flags: list[str],
) -> tuple[float, float] | None:
    """(energy over the baseline, mean power) from the counter, read at each edge of the window.

    The counter is cumulative, so its value at an edge is interpolated between the readings on either
    side: the window gets the readings inside it whole, and only the share of the two edge intervals
    that falls inside. A step in power near an edge then costs at most a part of one interval.
    """
    readings = [(t, c) for t, _, c in ticks if c is not None]
    first = next((i for i, (t, _) in enumerate(readings) if t > start_ns), len(readings)) - 1
    last = next((i for i, (t, _) in enumerate(readings) if t >= end_ns), None)
    if first < 0 or last is None:
        return None
    span = readings[first : last + 1]
    if span[-1][0] - span[0][0] > 2 * (end_ns - start_ns):
        return None  # a bracket much wider than the event says more about its neighbours than about it
    total, wrapped = [0.0], False
    for (_, a), (_, b) in itertools.pairwise(span):
        step = b - a
        if step < 0:  # the counter wrapped between these two readings
            step, wrapped = step + wrap_mj, True
        total.append(total[-1] + step)
    times = [t for t, _ in span]
    delta_mj = _at(end_ns, times, total) - _at(start_ns, times, total)
    if wrapped:
        flags.append("counter_wrapped")
    duration_s = (end_ns - start_ns) / 1e9
    mean_w = delta_mj / 1000 / duration_s
    energy = (mean_w - baseline.mean_w) * duration_s
    if energy < 0:
        flags.append("below_baseline")
        energy = 0.0
    return energy, mean_w


def _at(t: int, times: list[int], total: list[float]) -> float:
    """The cumulative counter at ``t``, linear between the readings on either side (``t`` is within)."""
    i = max(0, min(len(times) - 2, bisect.bisect_right(times, t) - 1))
    (t0, t1), (c0, c1) = times[i : i + 2], total[i : i + 2]
    return c0 + (c1 - c0) * (t - t0) / (t1 - t0) if t1 > t0 else c1
