"""Distribution figures (method §3): latency is a distribution, so percentiles first, mean as burden."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from agent.core.figures import PERCENTILES
from analysis.quantiles import stream_stats
from analysis.results import Distribution

if TYPE_CHECKING:
    from analysis.columns import Rows

__all__ = ["describe", "describe_itl", "median", "seqsum"]

#: Inter-token latencies gathered into memory for ``describe_itl`` up to this many (32 MB); more are
#: described over chunks, with the same percentiles (``analysis.quantiles``).
ITL_IN_MEMORY = 4 << 20

_PCTS = PERCENTILES


def _known(values: Iterable[float | None] | np.ndarray) -> np.ndarray:
    if isinstance(values, np.ndarray):
        arr = values.astype(np.float64, copy=False)
        return arr[~np.isnan(arr)]
    return np.fromiter((v for v in values if v is not None), dtype=np.float64)


def describe(values: Iterable[float | None] | np.ndarray) -> Distribution | None:
    """n, mean, p50, p95, p99 and max of the values (None and NaN left out); None when there are none."""
    arr = _known(values)  # a copy of its own, so the percentiles may reorder it
    if arr.size == 0:
        return None
    mean, top = float(arr.mean()), float(arr.max())  # before the partition moves the values
    p50, p95, p99 = np.percentile(arr, _PCTS, overwrite_input=True)
    return Distribution(n=int(arr.size), mean=mean, p50=float(p50), p95=float(p95), p99=float(p99), max=top)


def median(values: Iterable[float | None] | np.ndarray) -> float | None:
    """Median of the values (None and NaN left out), or None."""
    arr = _known(values)
    return float(np.median(arr)) if arr.size else None


def seqsum(values: np.ndarray) -> float:
    """The sum taken left to right, as a loop over the values adds them (numpy's own sum is pairwise)."""
    return float(np.cumsum(values)[-1]) if values.size else 0.0


def describe_itl(rows: Rows) -> Distribution | None:
    """The inter-token latencies of ``rows``: in memory up to ``ITL_IN_MEMORY``, else over chunks."""
    itl = rows.cols.itl
    if itl.count(rows.index) <= ITL_IN_MEMORY:
        parts = list(itl.chunks(rows.index))
        return describe(np.concatenate(parts) if parts else np.zeros(0))
    stats = stream_stats(lambda: (c[~np.isnan(c)] for c in itl.chunks(rows.index)), _PCTS)
    if stats is None:
        return None
    p50, p95, p99 = stats.percentiles
    return Distribution(n=stats.n, mean=stats.mean, p50=p50, p95=p95, p99=p99, max=stats.max)
