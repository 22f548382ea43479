"""Regressions that page, end to end on loopback with the real parts: the daemon probing a simulator, a
real Prometheus scraping it and a Pushgateway with the shipped rules (the fast profile: the same rules
on second-scale windows), a real Alertmanager routing to a webhook receiver in this test.

Healthy traffic: nothing fires. The simulator made 4× slower (TTFT and TPOT): the decode-rate and TTFT
regression alerts reach the receiver. A drifted analysis pushed: the quality alert reaches the receiver;
a clean second candidate pushed: the first alert still stands.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import sim_server, start_cli, wait_for
from tests.integration.test_analyze_publish import alerts, analyze_and_push
from tests.integration.test_prometheus import free_port, promql
from tests.promtools import Alertmanager, Prometheus, grafana_module
from tests.unit.analysis.test_analyze_cli import ANSWERS, write_run

pytestmark = pytest.mark.slow


def fast_rules(folder: Path) -> Path:
    rules = grafana_module("rules")
    path = folder / "rules-fast.yml"
    path.write_text(rules.render(rules.FAST))
    return path


class Receiver:
    """A webhook receiver: every notification Alertmanager posts, in order."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                owner.posts.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def firing(self) -> list[dict[str, str]]:
        """Labels of every alert notified as firing so far."""
        return [a["labels"] for p in self.posts for a in p["alerts"] if a["status"] == "firing"]

    def names(self) -> set[str]:
        return {labels["alertname"] for labels in self.firing()}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.server.shutdown()


def ready_rows(api: str, query: str) -> list[dict[str, Any]]:
    """The query's rows, or none while Prometheus is still starting."""
    try:
        return promql(api, query)
    except OSError:
        return []


def put_model(base: str, **fields: float) -> None:
    req = urllib.request.Request(f"{base}/sim/model", data=json.dumps(fields).encode(), method="PUT")
    with urllib.request.urlopen(req, timeout=5) as r:
        assert json.loads(r.read())["ttft_ms"]["mean"] == fields["ttft_ms"]


def test_a_slower_server_and_a_drifted_candidate_page_and_healthy_traffic_does_not(
    tmp_path: Path, cache_dir: Path, receiver: Receiver, pushgateway: tuple[str, int]
) -> None:
    gateway, gateway_port = pushgateway
    am = Alertmanager(tmp_path, free_port(), receiver.url)
    metrics_port = free_port()
    with sim_server("--ttft-ms", "20", "--itl-ms", "4") as sim:
        config = tmp_path / "daemon.yaml"
        config.write_text(
            f"metrics: {{host: 127.0.0.1, port: {metrics_port}}}\n"
            "probe: {interval: 150ms, jitter: 0.1, timeout: 10s, max_tokens: 16}\n"
            f"sampling: {{every: 0, dir: {tmp_path / 'samples'}}}\n"
            "targets:\n"
            f"  - {{name: llm, backend: openai, args: {{base_url: '{sim}', model: sim}}, scenario: micro}}\n"
        )
        daemon = start_cli(["daemon", "--config", str(config)], cache_dir)
        prom = Prometheus(
            tmp_path,
            free_port(),
            [f"127.0.0.1:{metrics_port}"],
            job="daemon",
            rules=fast_rules(tmp_path),
            more_jobs={"pushgateway": ([f"127.0.0.1:{gateway_port}"], True)},
            alertmanager=am.address,
        )
        try:
            rate = "infermeter:decode_tokens_per_second:mean"
            # healthy: long enough that the regression rules have their baseline (45 s back + the window)
            wait_for(lambda: bool(ready_rows(prom.api, rate)), 60, "the decode rate to be recorded")
            started = time.monotonic()
            wait_for(lambda: time.monotonic() - started > 55, 70, "a healthy baseline")
            assert bool(promql(prom.api, f"{rate} offset 45s")), "no baseline yet"
            firing = [a for a in alerts(prom.api) if a["state"] == "firing"]
            assert firing == [] and receiver.firing() == [], (firing, receiver.firing())
            healthy = float(promql(prom.api, rate)[0]["value"][1])

            put_model(sim, ttft_ms=80, itl_ms=16)  # 4x slower to the first token and between tokens
            wanted = {"InfermeterDecodeRateRegression", "InfermeterTTFTRegression"}
            try:
                wait_for(lambda: wanted <= receiver.names(), 90, "the regression alerts at the receiver")
            except AssertionError as e:
                state = [(a["labels"]["alertname"], a["state"]) for a in alerts(prom.api)]
                now, then = promql(prom.api, rate), promql(prom.api, f"{rate} offset 45s")
                raise AssertionError(
                    f"{e}; alerts {state}, rate {now} vs {then}, at the receiver: {receiver.posts}"
                ) from None
            slow = float(promql(prom.api, rate)[0]["value"][1])
            assert slow < 0.7 * healthy
            paged = {a["alertname"]: a for a in receiver.firing() if a["alertname"] in wanted}
            assert all(a["backend"] == "llm" and a["scenario"] == "micro" for a in paged.values())

            base = write_run(tmp_path / "base", seed=1)
            drifted = write_run(
                tmp_path / "worse", slow=1.5, answers={**ANSWERS, "q1": "Kyoto", "m1": "B"}, seed=3
            )
            analyze_and_push(drifted, base, gateway)

            def drift_paged() -> bool:
                return any(
                    a["alertname"] == "InfermeterQualityDrift" and a.get("candidate") == "worse"
                    for a in receiver.firing()
                )

            wait_for(drift_paged, 60, "the quality alert at the receiver")
            analyze_and_push(write_run(tmp_path / "clean", seed=2), base, gateway)
            wait_for(
                lambda: (
                    {r["metric"].get("candidate") for r in promql(prom.api, "infermeter_quality_tier")}
                    >= {"worse", "clean"}
                ),
                30,
                "both candidates scraped",
            )
            time.sleep(5)  # several evaluations with both candidates present
            standing = [
                a
                for a in alerts(prom.api)
                if a["labels"]["alertname"] == "InfermeterQualityDrift" and a["state"] == "firing"
            ]
            assert standing and {a["labels"]["candidate"] for a in standing} == {"worse"}
            resolved = [
                a
                for p in receiver.posts
                for a in p["alerts"]
                if a["status"] == "resolved" and a["labels"]["alertname"] == "InfermeterQualityDrift"
            ]
            assert resolved == []
        finally:
            prom.stop()
            am.stop()
            daemon.terminate()
            daemon.communicate(timeout=60)
