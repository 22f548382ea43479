"""Exact percentiles of more values than memory should hold: a radix selection over re-readable chunks.

``np.percentile`` needs every value in memory at once; a million-request chat run has 127 million
inter-token latencies (1 GB as float64). Here the values are read in chunks, as often as needed: the
first pass counts them, sums them and builds a histogram of the top 16 bits of each value's order key
(the float's bits, flipped so that unsigned order is numeric order); each further pass narrows the
histogram bin that holds a wanted rank by 16 more bits, until the bin is small enough to hold in memory
or holds a single value. The result is the order statistic ``np.percentile`` would pick, interpolated
the way numpy does ("linear"), so the percentiles are equal to numpy's bit for bit (a test holds them
so); the mean is the sum of the chunks' sums over n, equal to numpy's to rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

__all__ = ["GATHER_LIMIT", "StreamStats", "stream_stats"]

#: A bin with at most this many values is gathered and partitioned in memory (8 MB of float64).
GATHER_LIMIT = 1 << 20

_BITS = 16
_SIGN = np.uint64(1 << 63)


def _keys(values: np.ndarray) -> np.ndarray:
    """Unsigned keys in the values' numeric order (negative floats have every bit flipped)."""
    u = np.ascontiguousarray(values, dtype=np.float64).view(np.uint64)
    if not np.signbit(values).any():  # latencies: no negative value, so one operation
        return u | _SIGN
    return np.where(u & _SIGN, ~u, u | _SIGN)


def _value(key: int) -> float:
    k = np.uint64(key)
    u = k & ~_SIGN if k & _SIGN else ~k
    return float(np.array([u], dtype=np.uint64).view(np.float64)[0])


def _lerp(a: float, b: float, t: float) -> float:
    """Numpy's linear interpolation between two order statistics, in its own order of operations."""
    diff = b - a
    return b - diff * (1 - t) if t >= 0.5 else a + diff * t


@dataclass
class _Rank:
    """One wanted order statistic: the key bits fixed so far and its rank among the keys sharing them."""

    rank: int
    prefix: int = 0
    bits: int = 0
    value: float | None = None


@dataclass(frozen=True, slots=True)
class StreamStats:
    """n, mean, max and the wanted percentiles of every value the chunks held."""

    n: int
    mean: float
    max: float
    percentiles: tuple[float, ...]


def _first_pass(chunks: Iterable[np.ndarray]) -> tuple[int, float, float, np.ndarray]:
    n, total, top = 0, [], -math.inf
    hist = np.zeros(1 << _BITS, dtype=np.int64)
    for chunk in chunks:
        if chunk.size == 0:
            continue
        n += chunk.size
        total.append(float(chunk.sum()))
        top = max(top, float(chunk.max()))
        hist += np.bincount((_keys(chunk) >> np.uint64(64 - _BITS)).astype(np.int64), minlength=1 << _BITS)
    return n, math.fsum(total), top, hist


def _settle(r: _Rank, hist: np.ndarray) -> int:
    """Fix the next bits of ``r`` from the histogram of its bin; return how many keys share them."""
    cum = np.cumsum(hist)
    b = int(np.searchsorted(cum, r.rank, side="right"))
    r.rank -= int(cum[b - 1]) if b else 0
    r.prefix = (r.prefix << _BITS) | b
    r.bits += _BITS
    if r.bits == 64:
        r.value = _value(r.prefix)
    return int(hist[b])


def _narrow(chunks: Callable[[], Iterator[np.ndarray]], pending: list[_Rank]) -> list[_Rank]:
    """One pass: a histogram of the next 16 bits within each pending bin, or the bin's values gathered."""
    shift = {id(r): np.uint64(64 - r.bits) for r in pending}
    hists = {id(r): np.zeros(1 << _BITS, dtype=np.int64) for r in pending}
    for chunk in chunks():
        keys = _keys(chunk)
        for r in pending:
            inside = keys[(keys >> shift[id(r)]) == np.uint64(r.prefix)]
            below = np.uint64(64 - r.bits - _BITS)
            hists[id(r)] += np.bincount(
                ((inside >> below) & np.uint64((1 << _BITS) - 1)).astype(np.int64), minlength=1 << _BITS
            )
    _gather(chunks, [r for r in pending if _settle(r, hists[id(r)]) <= GATHER_LIMIT and r.value is None])
    return [r for r in pending if r.value is None]


def _gather(chunks: Callable[[], Iterator[np.ndarray]], ranks: list[_Rank]) -> None:
    """One pass that keeps the keys of each rank's bin, then picks the rank among them."""
    bins = {(r.prefix, r.bits) for r in ranks}
    if not bins:
        return
    kept: dict[tuple[int, int], list[np.ndarray]] = {b: [] for b in bins}
    for keys in map(_keys, chunks()):
        for prefix, bits in bins:
            kept[(prefix, bits)].append(keys[(keys >> np.uint64(64 - bits)) == np.uint64(prefix)])
    for r in ranks:
        keys = np.concatenate(kept[(r.prefix, r.bits)])
        r.value = _value(int(np.partition(keys, r.rank)[r.rank]))


def stream_stats(
    chunks: Callable[[], Iterator[np.ndarray]], percentiles: Iterable[float]
) -> StreamStats | None:
    """Statistics over every value ``chunks()`` yields (called once per pass); None when there are none.

    ``chunks`` must yield the same float64 values on every call, with no NaN.
    """
    n, total, top, hist = _first_pass(chunks())
    if n == 0:
        return None
    wanted = []
    for q in percentiles:
        index = (n - 1) * (float(q) / 100)
        lo = math.floor(index)
        wanted.append((index - lo, lo, min(lo + 1, n - 1)))
    ranks = {k: _Rank(k) for _, lo, hi in wanted for k in (lo, hi)}
    big = {id(r) for r in ranks.values() if _settle(r, hist) > GATHER_LIMIT}
    pending = [r for r in ranks.values() if id(r) in big]
    _gather(chunks, [r for r in ranks.values() if id(r) not in big])
    while pending:
        pending = _narrow(chunks, pending)
    out = []
    for t, lo, hi in wanted:
        a, b = ranks[lo].value, ranks[hi].value
        assert a is not None and b is not None
        out.append(_lerp(a, b, t))
    return StreamStats(n=n, mean=total / n, max=top, percentiles=tuple(out))
