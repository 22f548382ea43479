"""Records reach the disk while the load runs: a run killed with SIGKILL at concurrency 512 loses only
the last moments' completions, checked against the simulator's own count of streams it served."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from pathlib import Path

import pytest

from agent.run.writer import BACKLOG_LIMIT
from tests.integration.conftest import sim_server, start_cli

pytestmark = pytest.mark.slow

CONCURRENCY = 512


def served(base: str) -> int:
    """Streams the simulator has sent to their end."""
    with urllib.request.urlopen(f"{base}/health", timeout=5) as r:
        return int(json.loads(r.read())["served"])


def whole_lines(path: Path) -> list[dict[str, object]]:
    """Every line of the file, each of which must be one whole JSON record."""
    data = path.read_bytes() if path.exists() else b""
    assert not data or data.endswith(b"\n"), "the last line is torn"
    return [json.loads(line) for line in data.splitlines()]


def count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as fh:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))


def test_a_run_killed_at_c512_loses_only_the_last_moments(tmp_path: Path, cache_dir: Path) -> None:
    out = tmp_path / "run"
    records = out / "records.jsonl"
    with sim_server("--ttft-ms", "5", "--itl-ms", "2") as base:
        args = ["run", "chat", "--requests", "100000", "--concurrency", str(CONCURRENCY), "--warmup", "0"]
        args += ["--max-tokens", "4", "--backend", "sim", "--base-url", base, "--out", str(out)]
        run = start_cli([*args, "--no-progress"], cache_dir)
        try:
            # enough load to show anything: wait for it however slow the machine is (a busy laptop
            # gets there later, never with less), then look
            deadline = time.monotonic() + 240
            while count_lines(records) < 5000 and time.monotonic() < deadline and run.poll() is None:
                time.sleep(0.1)
            # mid-run: what is on disk trails what the simulator finished by at most the writer's bound
            # plus the streams the client had not yet read to their end (at most one per connection)
            gaps = []
            for _ in range(10):
                on_disk = count_lines(records)
                gaps.append(served(base) - on_disk)
                time.sleep(0.3)
            assert run.poll() is None, "the run ended before it was killed; nothing was shown"
            run.send_signal(signal.SIGKILL)
            run.wait(10)
            kept = whole_lines(records)
            finished = served(base)
        finally:
            if run.poll() is None:
                run.kill()
    assert len(kept) >= 5000, f"too little load to show anything: {len(kept)} records"
    assert len({r["seq"] for r in kept}) == len(kept)
    bound = BACKLOG_LIMIT + CONCURRENCY
    assert max(gaps) <= bound, f"records trailed the simulator by {gaps}"
    lost = finished - len(kept)
    assert 0 <= lost <= bound, f"SIGKILL lost {lost} of {finished} finished requests"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "running"  # killed: nothing could mark it, and nothing was torn
