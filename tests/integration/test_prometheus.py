"""The exporter against the real thing: promtool lints a live scrape, and a real Prometheus scraping a
run's /metrics answers PromQL with the values the run's own records imply."""

from __future__ import annotations

import itertools
import json
import math
import socket
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from exporters import names
from tests.integration.conftest import read_records, start_cli, wait_for
from tests.promtools import Prometheus, binary

pytestmark = pytest.mark.slow

SIM = ["--backend", "sim", "--backend-arg", "ttft_ms=30", "--backend-arg", "itl_ms=2", "--no-progress"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return str(r.read().decode())


def promql(base: str, query: str) -> list[dict[str, Any]]:
    body = json.loads(get(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": query})))
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def scalar(base: str, query: str) -> float | None:
    result = promql(base, query)
    return float(result[0]["value"][1]) if result else None


def quantile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, math.ceil(q * len(values)) - 1)]


def bucket_of(value_s: float) -> tuple[float, float]:
    edges = [0.0, *names.LATENCY_BUCKETS, math.inf]
    for lo, hi in itertools.pairwise(edges):
        if lo < value_s <= hi:
            return lo, hi
    raise AssertionError(value_s)


@pytest.fixture
def metrics_run(tmp_path: Path, cache_dir: Path) -> Any:
    port = free_port()
    out = tmp_path / "run"
    args = ["run", "chat", "--rate", "10", "--arrival", "constant", "--duration", "12s", "--max-tokens", "16"]
    args += ["--serve-metrics", "--metrics-port", str(port), "--metrics-linger", "60s", "--out", str(out)]
    proc = start_cli([*args, *SIM], cache_dir)
    base = f"http://127.0.0.1:{port}"

    def answering() -> bool:
        try:
            return "infermeter_build_info" in get(f"{base}/metrics")
        except OSError:
            return False

    try:
        wait_for(answering, 60, "the run's /metrics endpoint")
        yield base, out, proc
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_promtool_finds_nothing_to_fix_in_a_live_scrape(metrics_run: Any, tmp_path: Path) -> None:
    base, _, _ = metrics_run
    wait_for(lambda: "infermeter_ttft_seconds_bucket" in get(f"{base}/metrics"), 60, "a first record")
    scrape = get(f"{base}/metrics")
    res = subprocess.run(
        [str(binary("promtool")), "check", "metrics"],
        input=scrape,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip() == "" and res.stderr.strip() == ""  # no lint findings at all
    exposed = {line.split("{")[0].split(" ")[0] for line in scrape.splitlines() if not line.startswith("#")}
    ours = {n for n in exposed if n.startswith(names.PREFIX)}
    assert ours <= names.exposed_names()  # nothing exported that the catalogue does not own


def test_a_real_prometheus_sees_what_the_records_say(metrics_run: Any, tmp_path: Path) -> None:
    base, out, _ = metrics_run
    prom = Prometheus(tmp_path, free_port(), [base.removeprefix("http://")], job="infermeter")
    api = prom.api
    try:

        def up() -> bool:
            try:
                return scalar(api, 'up{job="infermeter"}') == 1
            except OSError:
                return False

        wait_for(up, 60, "Prometheus scraping the run")

        # constant 10/s for 12 s is 120 requests; the run then lingers, still scraped, with all of them.
        # A scrape can fall between a record's counter and its histograms (the client library updates
        # them one by one), so the run is settled once one later scrape shows both whole.
        def settled() -> bool:
            n = sum(1 for r in read_records(out) if r["stage"] == "steady")  # warmup is not exported
            return (
                n >= 120
                and scalar(api, "sum(infermeter_requests_total)") == n
                and scalar(api, "sum(infermeter_ttft_seconds_count)") == n
                and scalar(api, "sum(infermeter_in_flight_requests)") == 0
            )

        wait_for(settled, 90, "the run's last request in a scrape")
        records = [r for r in read_records(out) if r["stage"] == "steady"]
        ok = [r for r in records if r["status"] == "ok"]
        total = len(records)
        assert total == 120 and len(ok) == total
        assert scalar(api, "sum(infermeter_ttft_seconds_count)") == len(ok)
        assert scalar(api, "sum(infermeter_output_tokens_total)") == sum(r["output_tokens"] for r in ok)
        assert scalar(api, "sum(infermeter_itl_seconds_count)") == sum(len(r["itl_ms"]) for r in ok)
        # p95 TTFT from the histogram lies in the bucket holding the records' own p95
        p95 = scalar(api, "histogram_quantile(0.95, sum by (le) (infermeter_ttft_seconds_bucket))")
        assert p95 is not None
        lo, hi = bucket_of(quantile([r["ttft_ms"] / 1000 for r in ok], 0.95))
        assert lo <= p95 <= hi
        # tokens/s: the window gauges equal what the records say (the 12 s run sits inside the 60 s window)
        wall = scalar(api, "infermeter_wall_tokens_per_second")
        assert wall == pytest.approx(sum(r["wall_tok_s"] for r in ok) / len(ok), rel=1e-9)
        decode_s = sum(r["decode_ms"] for r in ok) / 1000
        native = scalar(api, "infermeter_native_tokens_per_second")
        assert native == pytest.approx(sum(r["output_tokens"] for r in ok) / decode_s, rel=1e-9)
        mean_e2e = sum(r["e2e_ms"] for r in ok) / len(ok)
        assert scalar(api, "sum(infermeter_e2e_seconds_sum) / sum(infermeter_e2e_seconds_count)") == (
            pytest.approx(mean_e2e / 1000, rel=1e-6)
        )
        assert scalar(api, "infermeter_backend_up") == 1
    finally:
        prom.stop()
