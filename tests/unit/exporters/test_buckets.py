"""Latency quantiles read from the exported buckets, the way Prometheus reads them, stay within the
stated bound of the exact quantile of the records, from 1 ms to 60 s."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporters import names
from exporters.prometheus import RecordMetrics
from tests.unit.exporters.test_prometheus import LABELS, record


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus' histogram_quantile: find the bucket holding rank q × count, interpolate linearly
    inside it (the lowest bucket starts at 0)."""
    buckets = sorted(buckets)
    total = buckets[-1][1]
    rank = q * total
    lower, below = 0.0, 0.0
    for upper, cumulative in buckets:
        if cumulative >= rank:
            if math.isinf(upper):
                return lower
            return lower + (upper - lower) * (rank - below) / (cumulative - below)
        lower, below = upper, cumulative
    raise AssertionError("unreachable")


def exported(metrics: RecordMetrics, name: str) -> list[tuple[float, float]]:
    family = next(f for f in text_string_to_metric_families(metrics.render().decode()) if f.name == name)
    return [(float(s.labels["le"]), s.value) for s in family.samples if s.name.endswith("_bucket")]


RNG = np.random.default_rng(7)
DISTRIBUTIONS = {
    "chat TTFT ~100 ms": RNG.lognormal(math.log(0.1), 0.3, 4000),
    "fast ITL ~2 ms": RNG.lognormal(math.log(0.002), 0.4, 4000),
    "long E2E ~20 s": RNG.lognormal(math.log(20.0), 0.5, 4000),
    "log-uniform 1 ms to 60 s": np.exp(RNG.uniform(math.log(0.001), math.log(60.0), 4000)),
    "two modes, 50 ms and 3 s": np.concatenate([RNG.normal(0.05, 0.005, 3000), RNG.normal(3.0, 0.2, 1000)]),
    "a tight cluster at 97 ms": RNG.normal(0.097, 0.001, 4000),
}


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_every_latency_quantile_is_within_the_bound(name: str) -> None:
    seconds = np.clip(DISTRIBUTIONS[name], 0.001, 60.0)
    metrics = RecordMetrics(version="t")
    for v in seconds:
        ms = float(v) * 1000
        metrics.observe(record(ttft_ms=ms, e2e_ms=ms, tpot_ms=ms, itl_ms=[ms]))
    for spec in (names.TTFT, names.E2E, names.TPOT, names.ITL):
        buckets = exported(metrics, spec.name)
        assert buckets[-1][1] == len(seconds), spec.name
        for q in (0.5, 0.9, 0.95, 0.99):
            exact = float(np.quantile(seconds, q))
            estimate = histogram_quantile(q, buckets)
            assert abs(estimate - exact) / exact <= names.QUANTILE_ERROR_BOUND + 1e-6, (spec.name, q, exact)


def test_the_buckets_grow_by_the_stated_factor_from_1ms_to_60s() -> None:
    fine = [b for b in names.LATENCY_BUCKETS if b <= 60.0 * names.BUCKET_GROWTH]
    assert fine[0] == 0.001 and fine[-1] >= 60.0
    assert max(b / a for a, b in itertools.pairwise(fine)) <= names.BUCKET_GROWTH + 1e-6
    assert names.LATENCY_BUCKETS[-1] >= 300 and LABELS  # minutes-long generations keep a bucket
