"""The daemon on a bad day, in process against a real simulator: a probe loop that raises is restarted,
a sample file that cannot be written never stops the probes, and every bad new config on SIGHUP
leaves the old one running. Each failure is logged, counted, shown in /status and turns /readyz red."""

from __future__ import annotations

import asyncio
import errno
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent.core.errors import RecordWriteError
from agent.run.daemon import Daemon
from tests.integration.test_daemon import SimServer
from tests.integration.test_prometheus import free_port

pytestmark = pytest.mark.slow


def config_text(sim_port: int, samples: Path, *, interval: str = "100ms") -> str:
    return f"""
metrics: {{host: 127.0.0.1, port: 0}}
probe: {{interval: {interval}, jitter: 0.1, timeout: 5s, max_tokens: 4, grace: 1s}}
backoff: {{initial: 0.2s, max: 1s}}
sampling: {{every: 1, dir: {samples}}}
targets:
  - name: sim-a
    backend: openai
    args: {{base_url: "http://127.0.0.1:{sim_port}", model: sim}}
    scenario: micro
"""


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[Daemon, Path, Path]]:
    sim = SimServer(free_port())
    sim.start()
    config = tmp_path / "daemon.yaml"
    config.write_text(config_text(sim.port, tmp_path / "samples"))
    daemon = Daemon(config)
    task = asyncio.create_task(daemon.run())
    try:
        await until(lambda: daemon.targets and daemon.targets["sim-a"].ok >= 2, "two ok probes")
        yield daemon, config, tmp_path
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 30)
        sim.kill()


async def until(predicate: Any, what: str, within_s: float = 30) -> None:
    try:
        async with asyncio.timeout(within_s):
            while not predicate():  # noqa: ASYNC110 - polled state of the daemon under test
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def errors(daemon: Daemon, component: str) -> float:
    value = daemon.metrics.registry.get_sample_value(
        "infermeter_daemon_errors_total", {"component": component, "target": "sim-a"}
    )
    return value or 0.0


async def test_a_probe_loop_that_raises_is_restarted_and_shown(
    running: tuple[Daemon, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon, _, _ = running
    real = daemon._probe
    failures = {"left": 2}

    async def flaky(t: Any) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("a bug in the probe")
        await real(t)

    monkeypatch.setattr(daemon, "_probe", flaky)
    await until(lambda: errors(daemon, "probe_loop") >= 1, "the failure counted")
    status = daemon.status()
    assert status["ready"] is False and not daemon._ready()
    assert "a bug in the probe" in status["targets"]["sim-a"]["loop_error"]["error"]
    ok = daemon.targets["sim-a"].ok
    await until(lambda: daemon.targets["sim-a"].ok > ok, "probes again after the restart", within_s=60)
    assert errors(daemon, "probe_loop") == 2
    assert daemon._ready() and daemon.status()["targets"]["sim-a"]["loop_failures"] == 2


async def test_a_sample_file_that_cannot_be_written_never_stops_the_probes(
    running: tuple[Daemon, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon, _, tmp_path = running
    assert daemon.samples is not None
    real = daemon.samples.write

    def full(record: Any) -> None:
        raise RecordWriteError(tmp_path / "samples" / "samples.jsonl", OSError(errno.ENOSPC, "No space left"))

    monkeypatch.setattr(daemon.samples, "write", full)
    ok = daemon.targets["sim-a"].ok
    await until(lambda: daemon.targets["sim-a"].ok >= ok + 3, "probes go on")
    status = daemon.status()
    assert not daemon._ready() and status["samples"]["error"] is not None
    assert "No space left" in status["samples"]["error"]["error"]
    assert errors(daemon, "samples") >= 3
    assert daemon.targets["sim-a"].up is True  # the target is fine; only the disk is not
    monkeypatch.setattr(daemon.samples, "write", real)
    await until(lambda: daemon.sample_error is None, "samples written again")
    assert daemon._ready()


@pytest.mark.parametrize(
    "bad",
    [
        b"probe: {interval: 1s}\ntargets: [{name: \xff, backend: sim}]\n",
        "sampling.dir is a file",
        b"probe: {interval: -1}\ntargets: [{name: a, backend: sim}]\n",
        b"backoff: {initial: -1}\ntargets: [{name: a, backend: sim}]\n",
        b"targets: [\n",
        b"metrics: {port: 99999}\ntargets: [{name: a, backend: sim}]\n",
    ],
)
async def test_every_bad_new_config_keeps_the_old_one(
    running: tuple[Daemon, Path, Path], bad: bytes | str
) -> None:
    daemon, config, tmp_path = running
    good = config.read_text()
    if bad == "sampling.dir is a file":
        (tmp_path / "a-file").write_text("not a directory\n")
        config.write_text(good.replace(str(tmp_path / "samples"), str(tmp_path / "a-file")))
    else:
        assert isinstance(bad, bytes)
        config.write_bytes(bad)
    assert await daemon.reload() is False
    assert list(daemon.targets) == ["sim-a"] and daemon.reloads == 0
    ok = daemon.targets["sim-a"].ok
    await until(lambda: daemon.targets["sim-a"].ok > ok, "the old config still probing")


async def test_a_target_that_sends_lone_surrogates_is_sampled_like_any_other(tmp_path: Path) -> None:
    """Every probe of a target whose text holds ``"\\ud800"`` is ok and written as a sample."""
    frame = b'data: {"choices":[{"index":0,"delta":{"content":"a\\ud800b\\u0000"},"finish_reason":null}]}\n\n'
    end = b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"\\udfff"}]}\n\ndata: [DONE]\n\n'

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")), 0
        )
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")
        writer.write(frame * 3 + end)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = tmp_path / "daemon.yaml"
    config.write_text(config_text(port, tmp_path / "samples"))
    daemon = Daemon(config)
    task = asyncio.create_task(daemon.run())
    try:
        await until(lambda: daemon.targets and daemon.targets["sim-a"].ok >= 3, "three ok probes")
        target = daemon.targets["sim-a"]
        assert target.up is True and target.probes - target.ok <= 1  # one may still be in flight
        assert daemon.sample_error is None and errors(daemon, "samples") == 0
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 30)
        server.close()
    lines = (tmp_path / "samples" / "samples.jsonl").read_bytes().decode("utf-8").splitlines()
    samples = [json.loads(line) for line in lines]
    assert len(samples) >= 3 and all(s["status"] == "ok" and s["text_sanitized"] for s in samples)
    assert all(s["finish_reason"] == "\ufffd" for s in samples)
