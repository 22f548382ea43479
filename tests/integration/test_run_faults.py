"""A run on a bad day: a record file that hits a size limit (as on a full disk) stops the load with
one line, only whole lines and no temporary files, and a failed manifest; a hang-up ends it like
SIGTERM; planted links are never followed."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import run_cli, sim_server, start_cli, wait_for
from tests.integration.test_durability import count_lines, served, whole_lines
from tests.integration.test_prometheus import free_port

pytestmark = pytest.mark.slow

LIMIT_BYTES = 300_000


@pytest.fixture
def sim_url() -> Iterator[str]:
    with sim_server("--ttft-ms", "2", "--itl-ms", "1") as url:
        yield url


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT_BYTES, LIMIT_BYTES))


def test_a_record_file_that_cannot_grow_ends_the_run_cleanly(
    tmp_path: Path, cache_dir: Path, sim_url: str
) -> None:
    out = tmp_path / "run"
    args = ["run", "chat", "--requests", "5000", "--concurrency", "8", "--warmup", "0", "--max-tokens", "4"]
    args += ["--backend", "sim", "--base-url", sim_url, "--out", str(out), "--no-progress"]
    done = run_cli(args, cache_dir, 300, preexec_fn=_limit_file_size)
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


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` at ``path`` (CI runs as root); without root a file-size limit stands in."""
    path.mkdir()
    mounted = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
        ).returncode
        == 0
    )
    assert mounted or os.geteuid() != 0, "root could not mount a tmpfs"
    try:
        yield path
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], check=True)


def test_a_full_disk_ends_the_run_with_a_failed_manifest_and_a_summary(
    tmp_path: Path, cache_dir: Path, sim_url: str
) -> None:
    """ENOSPC, not a size limit: the manifest and summary still fit, through the run's headroom."""
    with small_disk(tmp_path / "disk", "600k") as disk:
        out = disk / "run"
        args = [
            "run",
            "chat",
            "--requests",
            "5000",
            "--concurrency",
            "8",
            "--warmup",
            "0",
            "--max-tokens",
            "4",
            "--backend",
            "sim",
            "--base-url",
            sim_url,
            "--out",
            str(out),
            "--no-progress",
            "--energy",
            "off",
        ]
        done = run_cli(args, cache_dir, 300, preexec_fn=None if os.geteuid() == 0 else _limit_file_size)
        assert done.returncode == 1, done.stderr
        assert "Traceback" not in done.stderr + done.stdout
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, done.stderr
        assert str(out / "records.jsonl") in errors[0]
        assert "No space left on device" in errors[0] or os.geteuid() != 0
        records = whole_lines(out / "records.jsonl")
        assert 0 < len(records) < 5000
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["status"] == "failed" and manifest["records"]["total"] == len(records)
        summary = json.loads((out / "summary.json").read_text())
        assert sum(s["requests"]["ok"] for s in summary["scenarios"].values()) == len(records)
        assert f"run stopped: {len(records)} whole records on disk" in done.stderr
        assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "records.jsonl", "summary.json"]


def test_a_planted_link_in_the_run_directory_is_never_followed(tmp_path: Path, cache_dir: Path) -> None:
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    out = tmp_path / "run"
    out.mkdir()
    (out / "manifest.json.tmp").symlink_to(target)
    args = ["run", "chat", "--requests", "3", "--backend", "sim", "--out", str(out), "--no-progress"]
    done = run_cli(args, cache_dir, 120)
    assert done.returncode == 2, done.stderr
    assert "is not empty" in done.stderr and "Traceback" not in done.stderr
    assert target.read_text() == "keep me\n"


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_ends_the_run_with_its_records_and_summary(
    tmp_path: Path, cache_dir: Path, sim_url: str, sig: signal.Signals
) -> None:
    out = tmp_path / "run"
    args = ["run", "chat", "--requests", "100000", "--concurrency", "4", "--warmup", "0", "--max-tokens", "4"]
    proc = start_cli(
        [*args, "--backend", "sim", "--base-url", sim_url, "--out", str(out), "--no-progress"], cache_dir
    )
    try:
        wait_for(lambda: count_lines(out / "records.jsonl") > 50, 60, "records")
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + sig, stderr
    assert "Traceback" not in stderr
    records = whole_lines(out / "records.jsonl")
    assert all(r["status"] == "ok" or r["reason"] == "interrupted" for r in records)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["records"]["total"] == len(records)
    assert (out / "summary.json").exists()


def test_an_overloaded_open_loop_stops_sending_at_its_duration(
    tmp_path: Path, cache_dir: Path, sim_url: str
) -> None:
    out = tmp_path / "run"
    args = [
        "run",
        "chat",
        "--rate",
        "2000",
        "--arrival",
        "constant",
        "--duration",
        "2s",
        "--max-concurrency",
        "4",
    ]
    args += [
        "--warmup",
        "0",
        "--max-tokens",
        "4",
        "--backend",
        "sim",
        "--base-url",
        sim_url,
        "--out",
        str(out),
    ]
    args += ["--backend-arg", "ttft_ms=50", "--no-progress"]
    done = run_cli(args, cache_dir, 120)
    assert done.returncode == 0, done.stderr
    records = whole_lines(out / "records.jsonl")
    stage_start = min(float(r["intended_offset_ms"]) for r in records)  # the schedule's first send
    assert max(float(r["sent_offset_ms"]) for r in records) - stage_start <= 2000
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["not_sent_at_end"] > 1000  # ~4,000 were due; at most a few hundred could go out
    assert "were not sent" in done.stderr


def test_status_shows_the_run_while_it_lasts(tmp_path: Path, cache_dir: Path, sim_url: str) -> None:
    port = free_port()
    out = tmp_path / "run"
    args = ["run", "chat", "--requests", "100000", "--concurrency", "4", "--warmup", "0", "--max-tokens", "4"]
    args += ["--backend", "sim", "--base-url", sim_url, "--out", str(out), "--no-progress"]
    proc = start_cli([*args, "--serve-metrics", "--metrics-port", str(port)], cache_dir)
    try:

        def status() -> dict[str, Any]:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as r:
                    return json.loads(r.read())  # type: ignore[no-any-return]
            except OSError:
                return {}

        wait_for(lambda: status().get("records", {}).get("ok", 0) > 10, 60, "records in /status")
        shown = status()
        assert shown["status"] == "running" and shown["scenarios"] == ["chat"] and shown["stage"] == "steady"
        assert shown["backend"] == "sim" and shown["records"]["expected"] == 100000
        assert shown["run_id"] == json.loads((out / "manifest.json").read_text())["run_id"]
        assert 0 <= shown["in_flight"] <= 4
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM


@pytest.mark.parametrize("wait_for_records", [False, True])
def test_ctrl_c_again_and_again_still_ends_interrupted_with_a_summary(
    tmp_path: Path, cache_dir: Path, sim_url: str, wait_for_records: bool
) -> None:
    """A flurry of Ctrl-C from the moment the run directory exists (or once records flow): the load
    stops at the first; the others, arriving while the summary and manifest are written, are noted."""
    out = tmp_path / "run"
    proc = start_cli(
        [
            "run",
            "chat",
            "--requests",
            "5000",
            "--concurrency",
            "4",
            "--warmup",
            "0",
            "--max-tokens",
            "8",
            "--backend",
            "sim",
            "--base-url",
            sim_url,
            "--out",
            str(out),
            "--no-progress",
            "--energy",
            "off",
        ],
        cache_dir,
    )
    ready = (out / "records.jsonl") if wait_for_records else (out / "manifest.json")
    wait_for(lambda: ready.exists() and ready.stat().st_size > 0, 60, str(ready))
    for _ in range(30):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.02)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "interrupted", manifest["status"]
    assert (out / "summary.json").is_file()
    assert manifest["records"]["total"] == len(whole_lines(out / "records.jsonl"))
