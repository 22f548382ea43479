"""Secrets planted in every input a user has (a backend argument, the environment, a URL with a
password, a daemon config) appear in no output: run directory files, logs, /metrics, /status."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import ROOT, cli_env, sim_server, wait_for
from tests.integration.test_prometheus import free_port

pytestmark = pytest.mark.slow

SECRETS = ("sk-ARGSECRET2", "sk-ENVSECRET3", "PASSWORD1", "sk-DAEMONKEY4", "PASSWORD5")


@pytest.fixture
def sim_host() -> Iterator[str]:
    with sim_server("--ttft-ms", "2", "--itl-ms", "1") as url:
        yield url.removeprefix("http://")


def leaks(texts: list[str]) -> list[str]:
    return [s for s in SECRETS if any(s in t for t in texts)]


def files_text(directory: Path) -> list[str]:
    return [p.read_text(errors="replace") for p in directory.rglob("*") if p.is_file()]


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_no_output_of_a_run_shows_a_secret(tmp_path: Path, cache_dir: Path, sim_host: str) -> None:
    env = cli_env(cache_dir) | {
        "INFERMETER__OPENAI__API_KEY": "sk-ENVSECRET3",
        "INFERMETER__LOG_LEVEL": "debug",
    }
    common = ["run", "chat", "--requests", "3", "--warmup", "0", "--max-tokens", "4", "--no-progress"]
    keyed_args = [
        "--backend",
        "openai",
        "--base-url",
        f"http://{sim_host}",
        "--backend-arg",
        "api_key=sk-ARGSECRET2",
    ]
    keyed_args += ["--out", str(tmp_path / "keyed"), "--serve-metrics", "--metrics-port", "0"]
    keyed = run([*common, *keyed_args], env)
    assert keyed.returncode == 0, keyed.stderr
    # a password in the URL, and a server that is not there: the failure's detail names the URL
    plain = cli_env(cache_dir) | {"INFERMETER__LOG_LEVEL": "debug"}
    down_args = ["--backend", "openai", "--base-url", f"http://bob:PASSWORD1@127.0.0.1:{free_port()}"]
    down_args += ["--model", "m", "--out", str(tmp_path / "down")]
    down = run([*common, *down_args], plain)
    assert down.returncode == 0, down.stderr
    records = [json.loads(x) for x in (tmp_path / "down" / "records.jsonl").read_text().splitlines()]
    assert records and all(r["status"] == "degraded" for r in records)
    manifest = json.loads((tmp_path / "down" / "manifest.json").read_text())
    assert "bob:***@" in manifest["backend"]["base_url"]
    outputs = [keyed.stdout, keyed.stderr, down.stdout, down.stderr, *files_text(tmp_path)]
    assert not leaks(outputs)
    keyed_manifest = json.loads((tmp_path / "keyed" / "manifest.json").read_text())
    assert "api_key=***" in keyed_manifest["command"]  # masked, and still saying what was given


def test_the_daemon_shows_no_secret(tmp_path: Path, cache_dir: Path, sim_host: str) -> None:
    port = free_port()
    config = tmp_path / "daemon.yaml"
    config.write_text(
        f"""
metrics: {{host: 127.0.0.1, port: {port}}}
probe: {{interval: 200ms, timeout: 5s}}
sampling: {{every: 1, dir: {tmp_path / "samples"}}}
targets:
  - name: keyed
    backend: openai
    args: {{base_url: "http://{sim_host}", api_key: sk-DAEMONKEY4}}
    scenario: micro
  - name: down
    backend: openai
    args: {{base_url: "http://eve:PASSWORD5@127.0.0.1:{free_port()}", model: m}}
    scenario: micro
"""
    )
    env = cli_env(cache_dir) | {"INFERMETER__LOG_LEVEL": "debug"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "daemon", "--config", str(config)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def status() -> dict[str, object]:
            with urllib.request.urlopen(f"{base}/status", timeout=5) as r:
                return json.loads(r.read())  # type: ignore[no-any-return]

        def probed() -> bool:
            try:
                targets = status()["targets"]
            except OSError:
                return False
            return all(t["probes"] >= 2 for t in targets.values())  # type: ignore[attr-defined]

        wait_for(probed, 60, "both targets probed")
        shown = json.dumps(status())
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as r:
            metrics = r.read().decode()
        assert status()["targets"]["down"]["up"] is False  # type: ignore[index]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert not leaks([shown, metrics, out, err, *files_text(tmp_path / "samples")])
    assert (tmp_path / "samples" / "samples.jsonl").exists()


def test_a_key_and_a_url_password_together_are_one_error_before_any_request(
    tmp_path: Path, cache_dir: Path, sim_host: str
) -> None:
    env = cli_env(cache_dir) | {
        "INFERMETER__OPENAI__API_KEY": "sk-ENVSECRET3",
        "INFERMETER__LOG_LEVEL": "debug",
    }
    args = [
        "run",
        "chat",
        "--requests",
        "3",
        "--warmup",
        "0",
        "--no-progress",
        "--backend",
        "openai",
        "--base-url",
        f"http://bob:PASSWORD1@{sim_host}",
        "--out",
        str(tmp_path / "both"),
    ]
    proc = run(args, env)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "api_key" in errors[0] and "password" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) < 5, proc.stderr
    assert not (tmp_path / "both").exists()
    assert not leaks([proc.stdout, proc.stderr])


def test_a_logged_traceback_is_plain_and_masked(cache_dir: Path) -> None:
    """An exception logged with its traceback: no frame's local variables, every secret in it masked."""
    code = (
        "import structlog; from agent.cli.logs import configure_logging\n"
        "from agent.cli.settings import Settings\n"
        "from agent.core.redact import remember\n"
        "configure_logging(Settings(log_level='debug')); remember('sk-ARGSECRET2')\n"
        "def fails(key='sk-ARGSECRET2', url='http://bob:PASSWORD1@host/'):\n"
        "    raise ValueError(f'cannot use {url} with Bearer {key}')\n"
        "try:\n    fails()\nexcept ValueError:\n    structlog.get_logger().exception('request raised')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(cache_dir),
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" in proc.stderr and "ValueError: cannot use http://bob:***@host/" in proc.stderr
    assert not leaks([proc.stderr]) and "locals" not in proc.stderr.lower()
    assert len(proc.stderr.splitlines()) < 20, proc.stderr
