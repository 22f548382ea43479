"""Arrival schedules, pure: a load model in, intended send offsets (seconds from stage start) out.

Open-loop latency is measured from these intended times, never from the moment the client managed to
send (coordinated omission, method §1). Every schedule is seeded, so a run can be repeated exactly.

- ``constant``: one request every ``1/rate`` seconds.
- ``poisson``: exponential gaps with mean ``1/rate`` (memoryless arrivals).
- ``gamma``: gamma gaps with shape ``burstiness`` and mean ``1/rate``. The squared coefficient of
  variation of the gaps is ``1/burstiness``: 1 is Poisson, below 1 is burstier, above 1 is smoother
  (the same parameter as vLLM's ``--burstiness``).
- trace: recorded offsets divided by a speed factor.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterable, Iterator, Sequence
from typing import Literal

__all__ = [
    "ArrivalKind",
    "burstiness_of",
    "geometric_series",
    "ramp_rate",
    "ramped",
    "schedule",
    "trace_schedule",
]

ArrivalKind = Literal["constant", "poisson", "gamma"]


def _gaps(kind: ArrivalKind, rate: float, burstiness: float, rng: random.Random) -> Iterator[float]:
    mean = 1.0 / rate
    if kind == "constant":
        return itertools.repeat(mean)
    if kind == "poisson":
        return (rng.expovariate(rate) for _ in itertools.count())
    if kind == "gamma":
        scale = mean / burstiness
        return (rng.gammavariate(burstiness, scale) for _ in itertools.count())
    raise ValueError(f"unknown arrival kind {kind!r}; use constant, poisson or gamma")


def schedule(kind: ArrivalKind, rate: float, *, burstiness: float = 1.0, seed: int = 0) -> Iterator[float]:
    """Endless intended send offsets in seconds: the first at 0, then one gap after another.

    Offsets are cumulative sums of the gaps, so a late send never shifts the requests after it.
    """
    if not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"rate must be a positive number of requests per second, got {rate!r}")
    if not (burstiness > 0 and math.isfinite(burstiness)):
        raise ValueError(f"burstiness must be positive, got {burstiness!r}")
    if kind == "constant":  # i / rate exactly: summing 1/rate drifts, and a 12 s run at 10/s is 120 sends
        yield from (i / rate for i in itertools.count())
        return
    gaps = _gaps(kind, rate, burstiness, random.Random(seed))
    offset = 0.0
    while True:
        yield offset
        offset += next(gaps)


def ramp_rate(t: float, rate: float, ramp_s: float, start: float) -> float:
    """The rate ``t`` seconds into a stage whose rate rises linearly from ``start`` over ``ramp_s``."""
    if t >= ramp_s or ramp_s <= 0:
        return rate
    return start + (rate - start) * max(t, 0.0) / ramp_s


def ramped(offsets: Iterable[float], rate: float, ramp_s: float, start: float = 0.0) -> Iterator[float]:
    """Arrival offsets at ``rate``, warped so the rate rises linearly from ``start`` over ``ramp_s``.

    The process keeps its shape (Poisson stays Poisson, gamma keeps its burstiness): each offset ``s``
    of the steady process is the time by which ``rate · s`` arrivals are expected, and the ramp's
    cumulative rate ``Λ(t)`` is solved for that count.
    """
    if ramp_s <= 0:
        yield from offsets
        return
    slope = (rate - start) / ramp_s
    full = start * ramp_s + slope * ramp_s**2 / 2  # arrivals expected during the ramp
    for s in offsets:
        u = rate * s
        if u >= full:
            yield ramp_s + (u - full) / rate
        elif slope == 0:
            yield u / start
        else:  # slope/2 · t² + start · t − u = 0
            yield (-start + math.sqrt(start * start + 2 * slope * u)) / slope


def trace_schedule(offsets: Iterable[float], speed: float = 1.0) -> Iterator[float]:
    """Recorded offsets (seconds, any origin) replayed from 0 at ``speed`` times real time."""
    if not (speed > 0 and math.isfinite(speed)):
        raise ValueError(f"speed must be positive, got {speed!r}")
    first: float | None = None
    last = -math.inf
    for t in offsets:
        if first is None:
            first = t
        if t < last:
            raise ValueError(f"trace offsets must not go back in time ({t} after {last})")
        last = t
        yield (t - first) / speed


def geometric_series(start: float, stop: float, factor: float = 2.0) -> list[float]:
    """``start, start·factor, …`` up to and including ``stop`` (a doubling series by default)."""
    if start <= 0 or stop < start or factor <= 1:
        raise ValueError("need 0 < start <= stop and factor > 1")
    out = [start]
    while out[-1] * factor <= stop * (1 + 1e-9):
        out.append(out[-1] * factor)
    return out


def burstiness_of(offsets: Sequence[float]) -> float | None:
    """1 / CV² of the gaps between sorted offsets: ~1 for Poisson, the shape for gamma, large for constant.

    None when there are fewer than three offsets or the gaps do not vary.
    """
    if len(offsets) < 3:
        return None
    ordered = sorted(offsets)
    gaps = [b - a for a, b in itertools.pairwise(ordered)]
    mean = sum(gaps) / len(gaps)
    var = sum((g - mean) ** 2 for g in gaps) / (len(gaps) - 1)
    if mean <= 0 or var <= (mean * 1e-9) ** 2:  # below float noise: the gaps do not vary
        return None
    return mean * mean / var
