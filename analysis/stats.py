"""Distribution figures (method §3): latency is a distribution, so percentiles first, mean as burden."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from agent.core.figures import PERCENTILES
from analysis.results import Distribution

__all__ = ["describe", "median"]

_PCTS = PERCENTILES


def describe(values: Iterable[float | None]) -> Distribution | None:
    """n, mean, p50, p95, p99 and max of the non-None values; None when there are none."""
    arr = np.fromiter((v for v in values if v is not None), dtype=np.float64)
    if arr.size == 0:
        return None
    p50, p95, p99 = np.percentile(arr, _PCTS)
    return Distribution(
        n=int(arr.size),
        mean=float(arr.mean()),
        p50=float(p50),
        p95=float(p95),
        p99=float(p99),
        max=float(arr.max()),
    )


def median(values: Iterable[float | None]) -> float | None:
    """Median of the non-None values, or None."""
    arr = np.fromiter((v for v in values if v is not None), dtype=np.float64)
    return float(np.median(arr)) if arr.size else None
