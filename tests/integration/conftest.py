from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.promtools import binary

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model cache: the user's INFERMETER__CACHE_DIR when set, else one per test session."""
    configured = os.environ.get("INFERMETER__CACHE_DIR")
    return Path(configured) if configured else tmp_path_factory.mktemp("cache")


def cli_env(cache_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["INFERMETER__CACHE_DIR"] = str(cache_dir)
    return env


def start_cli(
    args: list[str], cache_dir: Path, *, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "agent.cli", *args],
        cwd=ROOT,
        env=env or cli_env(cache_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_cli(
    args: list[str],
    cache_dir: Path,
    timeout: float = 600,
    *,
    env: dict[str, str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args],
        cwd=ROOT,
        env=env or cli_env(cache_dir),
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=preexec_fn,
    )


@contextlib.contextmanager
def sim_server(*args: str) -> Iterator[str]:
    """``infermeter sim-server`` on a free loopback port with ``args``; yields its base URL."""
    sim = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "sim-server", "--port", "0", *args],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert sim.stdout is not None
    try:
        yield sim.stdout.readline().strip()
    finally:
        sim.terminate()
        sim.wait(10)


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "records.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def pushgateway(tmp_path: Path) -> Any:
    """A real Pushgateway on a free loopback port: ``(url, port)``."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    proc = subprocess.Popen(
        [str(binary("prometheus-pushgateway")), f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=5):  # 200 once it serves
                return True
        except OSError:
            return False

    try:
        wait_for(ready, 30, "the Pushgateway to listen")
        yield url, port
    finally:
        proc.terminate()
        proc.wait(30)


#: a vLLM started as the session begins, when it will be needed and its environment is there already:
#: its two minutes of start-up overlap the tests that come before the vLLM ones
_EARLY: dict[str, Any] = {}


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start vLLM now if a selected test uses it and ``make vllm`` has finished."""
    if not any("vllm" in getattr(item, "fixturenames", ()) for item in session.items):
        return
    import tempfile

    from tests.vllm import server as vllm_server

    try:
        vllm_server.home(timeout_s=0)
    except FileNotFoundError:
        return  # still being made, or missing: the fixture waits for it, or says why
    log = Path(tempfile.mkdtemp(prefix="infermeter-vllm-")) / "vllm.log"
    _EARLY["server"] = vllm_server.VllmServer(log)


@pytest.fixture(scope="session")
def vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real vLLM (CPU build) serving the built-in Gemma 3 270M, started once for the session."""
    from tests.vllm.server import VllmServer

    server = _EARLY.pop("server", None) or VllmServer(tmp_path_factory.mktemp("vllm") / "vllm.log")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A vLLM started early whose tests never ran (deselected, or the run stopped) is stopped."""
    early = _EARLY.pop("server", None)
    if early is not None:
        early.stop()
