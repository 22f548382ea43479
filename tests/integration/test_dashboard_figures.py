"""Every number on every dashboard panel equals the same figure computed from the run's own records.

A real open-loop run against the simulator (a cold start, some HTTP 500s, a replayed power trace) is
scraped by a real Prometheus with the shipped rules; when the run has ended, each panel's PromQL is asked
of Prometheus over a window that holds the whole run, and compared with the records: quantiles within the
buckets' stated error bound, rates, ratios and window gauges within a few percent (Prometheus extrapolates
a rate to its window's edges). A panel with no comparison here fails the test, so a new panel needs one.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.core.record import RequestRecord, meets_slo
from exporters.names import QUANTILE_ERROR_BOUND
from exporters.prometheus import DECLARED_REASONS
from tests.integration.conftest import read_records, start_cli, wait_for
from tests.integration.test_grafana_live import power_trace
from tests.integration.test_prometheus import free_port, promql
from tests.promtools import Prometheus

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
WINDOW = "5m"  # longer than the whole run: every rate and quantile covers all of it
WINDOW_S = 300.0
VARIABLES = {
    "$backend": ".*",
    "$model": ".*",
    "$scenario": ".*",
    "$__rate_interval": WINDOW,
    "$__range": WINDOW,
}
SERVER_PANELS_CHECKED = "vLLM's own series against vLLM itself (tests/integration/test_vllm.py)"
#: panels whose figures do not come from a load run's records, and where they are checked instead
NOT_FROM_RECORDS = {
    "quality": "published by `infermeter analyze` (tests/integration/test_analyze_publish.py)",
    "fleet / Scrape health": "Prometheus' own view of its scrapes",
    # the server's own series: a real vLLM scraped by a real Prometheus (tests/integration/test_vllm.py)
    "fleet / Canary TTFT p95 beside the server's own TTFT p95 / B": SERVER_PANELS_CHECKED,
    "fleet / Server ": SERVER_PANELS_CHECKED,
}
#: Prometheus scales a rate's increase to its window's end (by up to half a scrape interval, here over a
#: series about 25 s long): a few percent above the records' count
RATE_TOLERANCE = 0.06
SLO = {"ttft_ms": 60.0, "e2e_ms": 400.0}
J_PER_TOKEN = "Joules per output token (macro windows: GPU energy over baseline / all output tokens)"


def panels() -> dict[str, str]:
    """``dashboard / panel title / refId`` → the PromQL with the dashboard variables filled in."""
    out = {}
    for path in sorted((ROOT / "grafana" / "dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                expr = target["expr"]
                for var, value in VARIABLES.items():
                    expr = expr.replace(var, value)
                out[f"{path.stem} / {panel['title']} / {target['refId']}"] = expr
    return out


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Any:
    tmp = tmp_path_factory.mktemp("dashboard-figures")
    port = free_port()
    prom = Prometheus(
        tmp,
        free_port(),
        [f"127.0.0.1:{port}"],
        job="infermeter",
        rules=ROOT / "grafana" / "prometheus" / "rules.yml",
    )
    # Prometheus applies new targets after a few seconds: wait for its first (failed) scrape, so that it
    # sees every series at zero before the load (the first request is a 5 s cold start)
    wait_for(lambda: _scraped(prom.api), 60, "Prometheus to scrape the (not yet started) target")
    out = tmp / "run"
    args = ["run", "chat", "--backend", "sim", "--no-progress", "--out", str(out)]
    # the first request loads the model for 5 s: Prometheus, scraping each second, sees every series at
    # zero before any load even when a busy machine makes a few scrapes of the starting run time out
    args += ["--backend-arg", "ttft_ms=30", "--backend-arg", "itl_ms=4", "--backend-arg", "load_ms=5000"]
    args += ["--backend-arg", "error_rate=0.05", "--backend-arg", "seed=7"]
    args += [
        "--rate",
        "20",
        "--arrival",
        "constant",
        "--requests",
        "240",
        "--warmup",
        "2",
        "--max-tokens",
        "32",
    ]
    args += ["--energy", f"replay:{power_trace(tmp / 'power.csv')}", "--energy-baseline", "1s"]
    args += ["--slo-ttft-ms", "60", "--slo-e2e-ms", "400"]  # goodput: the HTTP 500s and slow requests miss
    args += ["--serve-metrics", "--metrics-port", str(port), "--metrics-linger", "120s"]
    run = start_cli(args, cache_dir)
    try:
        # energy.json is written once the load is over and every record is on disk; /metrics lingers
        wait_for(lambda: (out / "energy.json").exists() or run.poll() is not None, 120, "the load to end")
        assert run.poll() is None, run.communicate()[1][-2000:]
        time.sleep(8)  # scrapes after the last record: the rates' extrapolation shrinks as the series grows
        yield prom.api, read_records(out), json.loads((out / "energy.json").read_text())
    finally:
        prom.stop()
        run.terminate()
        run.communicate(timeout=30)


def _scraped(api: str) -> bool:
    try:
        return bool(promql(api, "up"))
    except OSError:
        return False


def _values(api: str, query: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Each series' value, keyed by its labels (the legend)."""
    out = {}
    for series in promql(api, query):
        labels = tuple(
            sorted((k, v) for k, v in series["metric"].items() if k in ("status", "reason", "gpu"))
        )
        out[labels] = float(series["value"][1])
    return out


def _one(api: str, query: str) -> float:
    values = list(_values(api, query).values())
    assert len(values) == 1, (query, values)
    return values[0]


@dataclass(frozen=True)
class Span:
    """Where a quantile of the records lies: between the interpolated sample quantile and the observation
    of rank ⌈q·n⌉, the one whose bucket Prometheus' ``histogram_quantile`` interpolates in. In a sparse
    tail (p99 of a few hundred requests) the two can be far apart; the panel must be within a bucket's
    width of that span."""

    low: float
    high: float


def _q(values: list[float], q: float) -> Span:
    ordered = np.sort(np.asarray(values, dtype=float))
    sample = float(np.quantile(ordered, q))
    ranked = float(ordered[max(0, math.ceil(q * ordered.size) - 1)])
    return Span(min(sample, ranked), max(sample, ranked))


def test_every_panel_equals_the_records(finished_run: Any) -> None:
    api, records, energy = finished_run
    steady = [r for r in records if not r["is_warmup"]]
    ok = [r for r in steady if r["status"] == "ok"]
    degraded = [r for r in steady if r["status"] == "degraded"]
    assert len(steady) == 240 and ok and degraded  # the run did what the comparisons need
    ms = 1000.0

    def quantile_of(field: str, q: float, rows: list[dict[str, Any]] = ok) -> Span:
        values = [
            v / ms for r in rows for v in (r[field] if field == "itl_ms" else [r[field]]) if v is not None
        ]
        return _q(values, q)

    def rate(n: float) -> float:
        return n / WINDOW_S

    tokens = sum(r["output_tokens"] for r in ok)
    (stage,) = energy["stages"]  # the steady-state macro window: J/token is its energy over ok tokens
    j_per_token = stage["energy_j"] / tokens
    native = [r for r in ok if r["decode_ms"] is not None]
    warmup_ok = [r["e2e_ms"] for r in records if r["is_warmup"] and r["status"] == "ok"]
    steady_warm = [r["e2e_ms"] for r in ok if not r["cold_start"]]
    qualities = [r["energy_quality"] for r in ok if r["energy_quality"] is not None]
    last_ok = max(r["sent_unix_s"] + r["e2e_ms"] / ms for r in ok)

    goodput = sum(meets_slo(RequestRecord.model_validate(r), SLO) for r in steady) / len(steady)
    assert 0 < goodput < 1  # some requests met the objectives and some (the HTTP 500s at least) did not
    quantile, relative = QUANTILE_ERROR_BOUND + 0.005, RATE_TOLERANCE
    # panel key → (expected value or {legend: value}, relative tolerance)
    expected: dict[str, tuple[Any, float]] = {
        "energy / GPU power / A": ({(("gpu", "0"),): 150.0}, 1e-9),
        "energy / GPU utilisation and memory / A": ({(("gpu", "0"),): 0.85}, 1e-9),
        "energy / GPU utilisation and memory / B": ({(("gpu", "0"),): 9000 / 24000}, 1e-9),
        f"energy / {J_PER_TOKEN} / A": (
            j_per_token,
            relative,
        ),
        "energy / kWh per 1M output tokens (macro windows) / A": (j_per_token * 1e6 / 3.6e6, relative),
        "energy / Share of request windows without data / A": (
            sum(q == "no_data" for q in qualities) / len(qualities),
            1e-9,
        ),
        "fleet / Backend up / A": (1.0, 0),
        "fleet / Canary TTFT p95 beside the server's own TTFT p95 / A": (
            quantile_of("ttft_ms", 0.95),
            quantile,
        ),
        "fleet / Probe rate / A": (rate(len(steady)), relative),
        "overview / Tokens per second: native vs wall / A": (
            sum(r["output_tokens"] for r in native) / (sum(r["decode_ms"] for r in native) / ms),
            1e-6,
        ),
        "overview / Tokens per second: native vs wall / B": (
            statistics.fmean(r["wall_tok_s"] for r in ok if r["wall_tok_s"] is not None),
            1e-6,
        ),
        "overview / Tokens per second: native vs wall / C": (rate(tokens), relative),
        "overview / HTTP overhead and decode fraction / A": (
            statistics.fmean(r["overhead_pct"] / 100 for r in ok if r["overhead_pct"] is not None),
            1e-6,
        ),
        "overview / HTTP overhead and decode fraction / B": (
            statistics.fmean(r["decode_fraction"] for r in ok if r["decode_fraction"] is not None),
            1e-6,
        ),
        "overview / Request rate by status / A": (
            {(("status", "ok"),): rate(len(ok)), (("status", "degraded"),): rate(len(degraded))},
            relative,
        ),
        "overview / Degraded rate by reason / A": (
            {
                (("reason", reason),): sum(r["reason"] == reason for r in degraded) / len(steady)
                # every declared reason is there from the start, at zero until it happens
                for reason in {*DECLARED_REASONS, *(r["reason"] for r in degraded)}
            },
            relative,
        ),
        "overview / In flight / A": (0.0, 0),
        "overview / Goodput: share of requests meeting every SLO / A": (goodput, relative),
        # the simulator compiles nothing, and no record says it did: the compile panels have no series
        "phases / Compile before the clock (in-process, seconds) / A": (
            {} if not any(r["compile_backend"] for r in records) else None,
            0,
        ),
        "phases / Frames compiled before / under the clock, graph breaks / A": (
            {} if not any(r["compile_backend"] for r in records) else None,
            0,
        ),
        "phases / Warmup ratio / A": (statistics.median(warmup_ok) / statistics.median(steady_warm), 1e-6),
        "phases / Cold starts / A": (float(sum(r["cold_start"] for r in records)), relative),
        "phases / Decode fraction / A": (
            statistics.fmean(r["decode_fraction"] for r in ok if r["decode_fraction"] is not None),
            1e-6,
        ),
    }
    for metric, field in (("TTFT", "ttft_ms"), ("ITL", "itl_ms"), ("TPOT", "tpot_ms"), ("E2E", "e2e_ms")):
        for ref, q in zip("ABC", (0.5, 0.95, 0.99), strict=True):
            expected[f"overview / {metric} p50 / p95 / p99 / {ref}"] = (quantile_of(field, q), quantile)
    for ref, q in zip("AB", (0.5, 0.99), strict=True):  # an open loop: every request sent, ok or not
        expected[f"overview / Schedule lag p50 / p99 (open loop) / {ref}"] = (
            quantile_of("schedule_lag_ms", q, steady),
            quantile,
        )
    for ref, field, q in (
        ("A", "prefill_ms", 0.5),
        ("B", "prefill_ms", 0.95),
        ("C", "decode_ms", 0.5),
        ("D", "decode_ms", 0.95),
    ):
        expected[f"phases / Native prefill vs decode (p50 / p95) / {ref}"] = (quantile_of(field, q), quantile)

    checks: dict[str, Callable[[str], None]] = {
        "fleet / Seconds since last success / A": lambda query: _since_last_success(api, query, last_ok),
    }
    all_panels = panels()
    unchecked = [
        key
        for key in all_panels
        if key not in expected
        and key not in checks
        and not any(key.startswith(prefix) for prefix in NOT_FROM_RECORDS)
    ]
    assert unchecked == []  # every panel needs a figure from the records to be compared with
    wrong = []
    for key, (want, tolerance) in expected.items():
        query = all_panels[key]
        got: Any = _values(api, query) if isinstance(want, dict) else _one(api, query)
        if not _close(got, want, tolerance):
            wrong.append(f"{key}: Prometheus {got}, records {want}")
    for key, check in checks.items():
        check(all_panels[key])
    assert wrong == [], "\n".join(wrong)


def _close(got: Any, want: Any, tolerance: float) -> bool:
    if isinstance(want, Span):
        return bool(want.low / (1 + tolerance) - 1e-12 <= got <= want.high * (1 + tolerance) + 1e-12)
    if isinstance(want, dict):
        return set(got) == set(want) and all(_close(got[k], want[k], tolerance) for k in want)
    return bool(got == pytest.approx(want, rel=tolerance, abs=1e-12))


def _since_last_success(api: str, query: str, last_ok_unix: float) -> None:
    now = time.time()
    assert _one(api, query) == pytest.approx(now - last_ok_unix, abs=3.0)
