"""The real llama.cpp engine (xllamacpp) serving the real Gemma 3 270M Q4_K_M model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import read_records, run_cli, start_cli, wait_for

pytestmark = pytest.mark.slow


def manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def engine_pid(run_dir: Path) -> int | None:
    path = run_dir / "manifest.json"
    if not path.exists():
        return None
    return manifest(run_dir).get("backend", {}).get("engine_pid")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_chat_run_records_both_clocks(tmp_path: Path, cache_dir: Path) -> None:
    out = tmp_path / "x"
    proc = run_cli(
        ["run", "chat", "--requests", "8", "--concurrency", "2", "--out", str(out), "--no-progress"],
        cache_dir,
    )
    assert proc.returncode == 0, proc.stderr
    records = read_records(out)
    steady = [r for r in records if r["stage"] == "steady"]
    warm = [r for r in records if r["is_warmup"]]
    assert len(steady) == 8 and len(warm) == 2
    for r in records:
        assert r["status"] == "ok", r
        assert r["ttft_ms"] <= r["e2e_ms"]
        assert r["prefill_ms"] + r["decode_ms"] <= r["e2e_ms"]
        assert r["token_source"] == "server" and r["output_tokens"] == 128 == r["requested_output_tokens"]
        assert r["chunks"] == r["output_tokens"]  # llama.cpp streams one token per chunk
        assert 0 < r["decode_fraction"] < 1
        assert r["native_source"] == "llamacpp_timings" and r["prompt_tokens"] > 100
        assert len(r["itl_ms"]) == r["chunks"] - 1
    m = manifest(out)
    assert m["status"] == "completed" and m["records"] == {"total": 10, "ok": 10}
    assert len(m["scenario"]["sha256"]) == 64 and m["scenario"]["normalised"]["concurrency"] == 2
    assert m["backend"]["model"] == "gemma3-270m" and m["backend"]["quantisation"] == "Q4_K_M"
    facts = m["backend"]["model_facts"]  # read from the GGUF itself, not its name
    assert facts["quantization"] == "Q4_K_M" and facts["architecture"] == "gemma3"
    assert facts["parameters"] == 268_098_176 and facts["context_length"] == 32768
    assert m["backend"]["n_parallel"] == 2 and m["gpu"]["available"] is False
    summary = json.loads((out / "summary.json").read_text())["scenarios"]["chat"]
    assert summary["requests"]["success_rate"] == 1.0 and summary["requests"]["ok"] == 8
    assert summary["latency_ms"]["ttft"]["p50"] <= summary["latency_ms"]["e2e"]["p50"]
    assert summary["warmup"]["ratio"] is not None
    assert "TTFT" in proc.stdout and "decode fraction" in proc.stdout
    again = run_cli(["summarize", str(out), "--json"], cache_dir)
    assert again.returncode == 0 and json.loads(again.stdout)["scenarios"]["chat"]["requests"]["ok"] == 8


def test_a_requantized_tier_is_made_once_and_served(tmp_path: Path, cache_dir: Path) -> None:
    out = tmp_path / "q4_0"
    args = ["run", "micro", "--requests", "3", "--warmup", "0", "--max-tokens", "16"]
    proc = run_cli([*args, "--backend-arg", "requantize=Q4_0", "--out", str(out), "--no-progress"], cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert all(r["status"] == "ok" and r["output_tokens"] > 0 for r in read_records(out))
    backend = manifest(out)["backend"]
    assert backend["quantisation"] == "Q4_0" and backend["requantized"] == "Q4_0"
    facts = backend["model_facts"]
    assert facts["quantization"] == "Q4_0" and facts["requantized_from"] == "gemma3-270m-q4_k_m.gguf (Q4_K_M)"
    assert facts["parameters"] == 268_098_176 and facts["file_bytes"] < 253_113_024
    made = list((cache_dir / "models").glob("*.requant-Q4_0-*.gguf"))
    assert [str(p) for p in made] == [backend["model_path"]]


def start_chat(out: Path, requests: int, cache_dir: Path, *, after: int) -> subprocess.Popen[str]:
    """Start a 48-token chat run without warmup and return once ``after`` records are on disk."""
    args = [
        "run",
        "chat",
        "--requests",
        str(requests),
        "--concurrency",
        "2",
        "--max-tokens",
        "48",
        "--warmup",
        "0",
    ]
    proc = start_cli([*args, "--out", str(out), "--no-progress"], cache_dir)
    try:
        wait_for(lambda: len(read_records(out)) >= after, 240, f"{after} completed records")
    except BaseException:
        proc.kill()
        raise
    return proc


def test_killing_the_engine_degrades_records_and_the_run_completes(tmp_path: Path, cache_dir: Path) -> None:
    out = tmp_path / "killed"
    proc = start_chat(out, 12, cache_dir, after=2)
    try:
        pid = engine_pid(out)
        assert pid is not None and alive(pid)
        os.kill(pid, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    records = read_records(out)
    assert len(records) == 12
    degraded = [r for r in records if r["status"] == "degraded"]
    assert degraded and all(r["reason"] in {"connection", "connection_reset"} for r in degraded)
    assert all(r["detail"] for r in degraded)
    m = manifest(out)
    assert m["status"] == "completed" and m["degraded_by_reason"]
    summary = json.loads((out / "summary.json").read_text())["scenarios"]["chat"]["requests"]
    assert summary["degraded"] == len(degraded) and summary["success_rate"] < 1


def test_sigterm_marks_run_interrupted_and_keeps_every_completed_record(
    tmp_path: Path, cache_dir: Path
) -> None:
    out = tmp_path / "term"
    proc = start_chat(out, 40, cache_dir, after=3)
    try:
        pid = engine_pid(out)
        completed_before = {r["request_id"] for r in read_records(out)}
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM
    records = read_records(out)
    assert completed_before <= {r["request_id"] for r in records}
    assert 3 <= len(records) < 40
    assert all(r["status"] == "ok" or r["reason"] == "interrupted" for r in records)
    m = manifest(out)
    assert m["status"] == "interrupted" and m["ended_at"]
    assert (out / "summary.json").exists()
    assert pid is not None
    wait_for(lambda: not alive(pid), 30, "the engine process to exit")


def test_a_trace_past_the_engines_context_is_refused_before_any_request(
    tmp_path: Path, cache_dir: Path
) -> None:
    trace = tmp_path / "trace.jsonl"
    trace.write_text(
        '{"timestamp": 0, "prompt_tokens": 20, "output_tokens": 4}\n'
        '{"timestamp": 0.5, "prompt_tokens": 300, "output_tokens": 4}\n'
    )
    out = tmp_path / "run"
    proc = run_cli(
        [
            "replay",
            str(trace),
            "--backend-arg",
            "ctx_per_slot=256",
            "--out",
            str(out),
            "--no-progress",
            "--energy",
            "off",
        ],
        cache_dir,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "request 2 asks for 300 prompt + 4 output tokens" in errors[0], proc.stderr
    assert "context of 256" in errors[0] and "Traceback" not in proc.stderr
    assert not (out / "records.jsonl").exists() or (out / "records.jsonl").read_text() == ""
