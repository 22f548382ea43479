"""Writes that fail: a run whose record file hits a size limit (as on a full disk) stops sending,
says so in one line, leaves only whole lines and no temporary files, and marks its manifest failed."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import ROOT, cli_env
from tests.integration.test_durability import served, whole_lines

pytestmark = pytest.mark.slow

LIMIT_BYTES = 300_000


@pytest.fixture
def sim_url() -> Iterator[str]:
    sim = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "sim-server", "--port", "0", "--ttft-ms", "2", "--itl-ms", "1"],
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


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT_BYTES, LIMIT_BYTES))


def test_a_record_file_that_cannot_grow_ends_the_run_cleanly(
    tmp_path: Path, cache_dir: Path, sim_url: str
) -> None:
    out = tmp_path / "run"
    args = ["run", "chat", "--requests", "5000", "--concurrency", "8", "--warmup", "0", "--max-tokens", "4"]
    args += ["--backend", "sim", "--base-url", sim_url, "--out", str(out), "--no-progress"]
    done = subprocess.run(
        [sys.executable, "-m", "agent.cli", *args],
        cwd=ROOT,
        env=cli_env(cache_dir),
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_limit_file_size,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert str(out / "records.jsonl") in errors[0] and "File too large" in errors[0]
    records = whole_lines(out / "records.jsonl")
    assert 0 < len(records) < 5000
    assert len({r["seq"] for r in records}) == len(records)
    assert not list(out.glob("*.tmp"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "failed"
    assert "File too large" in manifest["error"]
    assert manifest["records"]["total"] == len(records)
    summary = json.loads((out / "summary.json").read_text())
    assert sum(s["requests"]["ok"] for s in summary["scenarios"].values()) == len(records)
    # the load stopped: the simulator served about what was written, not the 5,000 asked for
    assert served(sim_url) <= len(records) + manifest["records"]["lost_in_failed_write"] + 8 + 1


def test_a_planted_link_in_the_run_directory_is_never_followed(tmp_path: Path, cache_dir: Path) -> None:
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    out = tmp_path / "run"
    out.mkdir()
    (out / "manifest.json.tmp").symlink_to(target)
    args = ["run", "chat", "--requests", "3", "--backend", "sim", "--out", str(out), "--no-progress"]
    done = subprocess.run(
        [sys.executable, "-m", "agent.cli", *args],
        cwd=ROOT,
        env=cli_env(cache_dir),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "is not empty" in done.stderr and "Traceback" not in done.stderr
    assert target.read_text() == "keep me\n"
