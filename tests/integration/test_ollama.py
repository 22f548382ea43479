"""The ``ollama`` backend end to end: against the Ollama-protocol emulation over the real engine, and live.

The emulation (``infermeter serve --api ollama``) is labelled as such everywhere; it exists because no Ollama
server can be installed here. The live test runs whenever ``OLLAMA_HOST`` answers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import ROOT, cli_env, read_records, run_cli


@pytest.fixture(scope="module")
def face(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    log = tmp_path_factory.mktemp("face") / "engine-timings.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "serve", "--api", "ollama", "--timings-log", str(log)],
        cwd=ROOT,
        env=cli_env(cache_dir),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    try:
        assert url.startswith("http://127.0.0.1:"), "the Ollama face did not start"
        yield url, log
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.slow
def test_chat_through_the_ollama_face_matches_engine_timings(face: tuple[str, Path], tmp_path: Path) -> None:
    url, log = face
    out = tmp_path / "run"
    args = ["run", "chat", "--backend", "ollama", "--base-url", url, "--requests", "4", "--concurrency", "2"]
    proc = run_cli([*args, "--max-tokens", "24", "--out", str(out), "--no-progress"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    records = read_records(out)
    engine = {row["request_id"]: row["timings"] for row in map(json.loads, log.read_text().splitlines())}
    assert len(records) == 6  # 2 warmup + 4 steady
    for r in records:
        assert r["status"] == "ok" and r["native_source"] == "ollama" and r["backend"] == "ollama"
        t = engine[r["request_id"]]
        assert abs(r["prefill_ms"] - t["prompt_ms"]) < 1.0
        assert abs(r["decode_ms"] - t["predicted_ms"]) < 1.0
        assert r["prompt_tokens"] == t["prompt_n"] and r["output_tokens"] == t["predicted_n"]
        assert 0 < r["decode_fraction"] < 1 and r["overhead_pct"] is not None
        assert r["native_total_ms"] <= r["e2e_ms"] + (r["load_ms"] or 0)
    first = min(records, key=lambda r: r["seq"])
    assert first["cold_start"] and first["load_ms"] > 500  # the engine start, measured by the face
    assert sum(r["cold_start"] for r in records) == 1
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["backend"]["ollama_version"].endswith("emulation")
    facts = manifest["backend"]["model_facts"]  # the control plane: /api/show through the ollama package
    assert facts["quantization"] == "Q4_K_M" == manifest["backend"]["quantization"]
    assert (
        facts["family"] == "gemma3"
        and facts["parameters"] == 268_098_176
        and facts["context_length"] == 32768
    )


@pytest.mark.slow
def test_generate_api_through_the_face(face: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = face
    out = tmp_path / "run"
    args = ["run", "micro", "--backend", "ollama", "--base-url", url, "--requests", "2", "--warmup", "0"]
    proc = run_cli([*args, "--backend-arg", "api=generate", "--out", str(out), "--no-progress"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    records = read_records(out)
    assert [r["status"] for r in records] == ["ok", "ok"]
    assert all(r["decode_ms"] > 0 and r["output_tokens"] > 0 for r in records)


@pytest.mark.slow
def test_unload_first_measures_a_cold_start_through_the_control_plane(
    face: tuple[str, Path], tmp_path: Path
) -> None:
    url, _ = face
    out = tmp_path / "cold"
    args = ["run", "micro", "--backend", "ollama", "--base-url", url, "--requests", "3", "--warmup", "0"]
    proc = run_cli(
        [*args, "--backend-arg", "unload_first=true", "--out", str(out), "--no-progress"], tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    backend = json.loads((out / "manifest.json").read_text())["backend"]
    assert backend["unloaded_first"] is True and backend["loaded_before_run"] is False
    records = sorted(read_records(out), key=lambda r: r["seq"])
    assert [r["status"] for r in records] == ["ok"] * 3
    assert records[0]["cold_start"] and records[0]["load_ms"] > 100  # the engine restarted for it
    assert records[0]["native_total_ms"] <= records[0]["e2e_ms"]  # the load happened inside the request
    assert not any(r["cold_start"] for r in records[1:])


def _live_host() -> str | None:
    host = os.environ.get("OLLAMA_HOST")
    if not host:
        return None
    url = host if "://" in host else f"http://{host}"
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/api/version", timeout=2) as resp:
            json.load(resp)
    except (OSError, ValueError):
        return None
    return url


@pytest.mark.ollama
def test_live_ollama(tmp_path: Path) -> None:
    url = _live_host()
    if url is None:
        pytest.skip("no Ollama server answers at OLLAMA_HOST")
    out = tmp_path / "live"
    args = ["run", "micro", "--backend", "ollama", "--base-url", url, "--requests", "3", "--out", str(out)]
    proc = run_cli([*args, "--no-progress"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    for r in read_records(out):
        assert r["status"] == "ok" and r["native_source"] == "ollama" and r["decode_ms"] > 0
