"""The daemon as an operator runs it: probing a live server, surviving its death, reloading on SIGHUP,
and stopping cleanly on SIGTERM, with a real Prometheus scraping it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import ROOT, cli_env, start_cli, wait_for
from tests.integration.test_prometheus import free_port, promql, scalar
from tests.promtools import Prometheus

pytestmark = pytest.mark.slow


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def metric(base: str, name: str, target: str) -> float | None:
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith(name + "{") and f'backend="{target}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


class SimServer:
    """``infermeter sim-server`` on a fixed port, so it can be killed and brought back."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        cmd = [sys.executable, "-m", "agent.cli", "sim-server", "--port", str(self.port), "--ttft-ms", "20"]
        cmd += ["--itl-ms", "2"]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().startswith("http")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def write_config(path: Path, metrics_port: int, sim_port: int, samples: Path, *, interval: str) -> None:
    path.write_text(
        f"""
metrics: {{host: 127.0.0.1, port: {metrics_port}}}
probe: {{interval: {interval}, jitter: 0.1, max_concurrency: 2, timeout: 10s, max_tokens: 8, grace: 5s}}
backoff: {{initial: 0.2s, max: 1s, factor: 2}}
sampling: {{every: 2, dir: {samples}, max_bytes: 4096, keep: 2}}
targets:
  - name: sim-a
    backend: openai
    args: {{base_url: "http://127.0.0.1:{sim_port}", model: sim}}
    scenario: micro
"""
    )


@pytest.fixture
def daemon_setup(tmp_path: Path, cache_dir: Path) -> Any:
    sim = SimServer(free_port())
    sim.start()
    metrics_port = free_port()
    config = tmp_path / "daemon.yaml"
    write_config(config, metrics_port, sim.port, tmp_path / "samples", interval="0.3s")
    proc = start_cli(["daemon", "--config", str(config)], cache_dir)
    base = f"http://127.0.0.1:{metrics_port}"
    try:
        wait_for(lambda: _ready(base), 60, "the daemon's /readyz")
        yield sim, proc, base, config, tmp_path
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)
        sim.kill()


def _ready(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/readyz", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def test_outage_recovery_reload_and_a_clean_stop(daemon_setup: Any) -> None:
    sim, proc, base, config, tmp = daemon_setup
    wait_for(lambda: metric(base, "infermeter_backend_up", "sim-a") == 1, 30, "a first good probe")
    status = get_json(f"{base}/status")["targets"]["sim-a"]
    assert status["up"] is True and status["last"]["status"] == "ok"
    with urllib.request.urlopen(f"{base}/healthz", timeout=5) as r:
        assert r.status == 200

    sim.kill()  # the backend dies: backend_up goes to 0 at the next probe (interval 0.3 s ± 10 %)
    wait_for(lambda: metric(base, "infermeter_backend_up", "sim-a") == 0, 2, "backend_up 0")
    wait_for(
        lambda: get_json(f"{base}/status")["targets"]["sim-a"]["consecutive_failures"] >= 3, 15, "backoff"
    )
    assert proc.poll() is None  # a down target never stops the daemon

    sim.start()  # back on the same port: recovery is detected
    wait_for(lambda: metric(base, "infermeter_backend_up", "sim-a") == 1, 15, "backend_up back to 1")
    ok_before = metric(base, "infermeter_requests_total", "sim-a")
    assert ok_before is not None

    good = config.read_text()
    config.write_text("targets: [{name: broken, backend: nope}]\n")
    proc.send_signal(signal.SIGHUP)  # a bad config is rejected; the old one keeps probing
    wait_for(
        lambda: (metric(base, "infermeter_requests_total", "sim-a") or 0) > ok_before + 2, 15, "probing on"
    )
    assert get_json(f"{base}/status")["reloads"] == 0
    config.write_text(good.replace("name: sim-a", "name: sim-b"))
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "sim-b" in get_json(f"{base}/status")["targets"], 15, "the reloaded target")
    wait_for(lambda: metric(base, "infermeter_backend_up", "sim-b") == 1, 15, "the new target probed")

    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    kinds = [e["event"] for e in events]
    assert (
        "target down" in kinds
        and "target recovered" in kinds
        and "config rejected; the old one keeps running" in kinds
    )
    assert kinds[-1] == "daemon stopped" and "Traceback" not in err
    samples = sorted((tmp / "samples").glob("samples*.jsonl"))
    assert samples and len(samples) <= 3  # the live file and at most `keep` rotated ones
    first = json.loads(samples[0].read_text().splitlines()[0])
    assert first["prompt_id"] and first["output_text"] is not None and first["status"] == "ok"


def test_prometheus_scrapes_the_daemon(daemon_setup: Any, tmp_path: Path) -> None:
    _, _, base, _, _ = daemon_setup
    prom = Prometheus(tmp_path, free_port(), [base.removeprefix("http://")], job="daemon")
    api = prom.api
    try:

        def scraped() -> bool:
            try:
                return (scalar(api, 'sum(infermeter_requests_total{backend="sim-a"})') or 0) >= 5
            except OSError:
                return False

        wait_for(scraped, 60, "Prometheus to see five probes")
        assert scalar(api, 'up{job="daemon"}') == 1
        assert scalar(api, 'infermeter_backend_up{backend="sim-a"}') == 1
        p95 = promql(
            api, 'histogram_quantile(0.95, sum by (le) (infermeter_ttft_seconds_bucket{backend="sim-a"}))'
        )
        assert p95 and 0.015 < float(p95[0]["value"][1]) < 1.0  # the simulator's TTFT is 20 ms
    finally:
        prom.stop()


def test_check_validates_a_config_and_names_the_bad_field(tmp_path: Path, cache_dir: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("probe: {interval: soon}\ntargets: []\n")
    res = subprocess.run(
        [sys.executable, "-m", "agent.cli", "daemon", "--config", str(bad), "--check"],
        cwd=ROOT,
        env=cli_env(cache_dir),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2
    assert "probe.interval" in res.stderr and "targets" in res.stderr


def test_a_probe_with_a_workload_makes_its_prompts_with_the_targets_tokenizer(
    tmp_path: Path, cache_dir: Path
) -> None:
    sim = SimServer(free_port())
    sim.start()
    port = free_port()
    config = tmp_path / "daemon.yaml"
    write_config(config, port, sim.port, tmp_path / "samples", interval="0.3s")
    config.write_text(config.read_text().replace("scenario: micro", "scenario: synthetic"))
    proc = start_cli(["daemon", "--config", str(config)], cache_dir)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _ready(base), 60, "the daemon's /readyz")
        wait_for(lambda: (metric(base, "infermeter_requests_total", "sim-a") or 0) >= 4, 30, "probes")
        status = get_json(f"{base}/status")["targets"]["sim-a"]
        assert status["up"] is True and status["last"]["status"] == "ok", status
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        sim.kill()
    assert proc.returncode == 0 and "Traceback" not in err
    probes = [
        json.loads(line)
        for f in sorted((tmp_path / "samples").glob("samples*.jsonl"))
        for line in f.read_text().splitlines()
    ]
    assert probes and all(p["status"] == "ok" for p in probes)
    for p in probes:  # drawn lengths, cut with the simulator's own /tokenize
        assert 320 <= p["requested_prompt_tokens"] <= 704 and p["prompt_id"].startswith("synthetic-")
