"""``infermeter run --backend transformers``: the tiny model through the CLI, and the real Gemma 3 GGUF."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.conftest import read_records, run_cli
from tests.tiny_lm import build_tiny_lm

pytestmark = pytest.mark.slow


def test_cli_run_with_compile_evidence(tmp_path: Path) -> None:
    model = build_tiny_lm(tmp_path / "tiny")
    out = tmp_path / "run"
    args = [
        "run",
        "micro",
        "--backend",
        "transformers",
        "--model",
        str(model),
        "--requests",
        "3",
        "--warmup",
        "1",
    ]
    proc = run_cli([*args, "--compile", "prefill", "--out", str(out), "--no-progress"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    records = read_records(out)
    assert len(records) == 4
    for r in records:
        assert r["status"] == "ok" and r["native_source"] == "transformers"
        assert r["decode_fraction"] is not None and r["compile_backend"] == "inductor"
    compile_facts = json.loads((out / "manifest.json").read_text())["backend"]["compile"]
    assert compile_facts["backend_requested"] == compile_facts["backend_actual"] == "inductor"
    assert compile_facts["unique_graphs"] >= 1
    # compiled before the clock: every measured request met a shape that was already compiled
    warm = compile_facts["warm"]
    assert warm["prompt_shapes"] >= 1 and warm["compile_s"] > 0 and compile_facts["compiles_measured"] == 0
    assert "compiled and warmed before the clock" in proc.stderr


def test_real_gemma_gguf_in_process(tmp_path: Path, cache_dir: Path) -> None:
    out = tmp_path / "run"
    args = [
        "run",
        "micro",
        "--backend",
        "transformers",
        "--requests",
        "2",
        "--warmup",
        "1",
        "--max-tokens",
        "6",
    ]
    proc = run_cli([*args, "--backend-arg", "threads=2", "--out", str(out), "--no-progress"], cache_dir)
    assert proc.returncode == 0, proc.stderr
    records = read_records(out)
    assert [r["status"] for r in records] == ["ok"] * 3
    for r in records:
        assert r["output_tokens"] == 6 and r["prefill_ms"] > 0 and r["decode_ms"] > 0
    facts = json.loads((out / "manifest.json").read_text())["backend"]
    assert facts["model_class"].startswith("Gemma3") and facts["parameters"] > 200_000_000
