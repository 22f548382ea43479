"""``benchmarks/gpu_check.py``: its CPU path runs everywhere (CI); its GPU path where NVML and CUDA exist."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def check(out: Path, *args: str, timeout: float) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--out", str(out), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report: dict[str, Any] = json.loads((out / "gpu_check.json").read_text())
    assert (out / "gpu_check.md").read_text().startswith(f"# GPU check ({report['path']} path)")
    return report


@pytest.mark.timeout(1500)  # a bound for a busy machine; quiet, it takes about two minutes
def test_the_cpu_path_runs_every_analysis_on_a_labelled_synthetic_sensor(tmp_path: Path) -> None:
    report = check(tmp_path / "check", "--cpu", timeout=1400)
    assert report["path"] == "cpu" and "no figure below is a power measurement" in report["sensor"]
    assert report["nvml"]["source"]["available"] is False and report["nvml"]["source"]["reason"]
    assert [row["interval_ms"] for row in report["poller"]] == [100.0, 20.0]
    assert all(row["gaps_over_2x"] == 0 and row["ticks"] > 5 for row in report["poller"])
    runs = report["runs"]
    assert set(runs) == {f"gpu_{s}@{ms}ms" for s in ("chat", "batch_prefill") for ms in (100, 20)}
    for label, run in runs.items():
        assert "error" not in run, label
        cvp = run["counter_vs_polled"]
        # the synthetic trace's counter integrates its own power readings: both ways must agree
        assert cvp["available"] and all(st["ratio"] == pytest.approx(1.0, abs=0.06) for st in cvp["stages"])
    chat = runs["gpu_chat@100ms"]
    # every measured request's windows were judged; how many the gate keeps depends on the CPU's speed
    assert chat["ok"] == 6 and all(chat["keep_rates"][p]["windows"] == 6 for p in ("request", "decode"))
    assert chat["stages"][0]["j_per_token"] > 0 and chat["metrics"]["all_hold"] is True
    evidence = report["compile"]["evidence"]
    assert evidence["backend_actual"] == "inductor" and evidence["compiles_measured"] == 0
    assert evidence["warm"]["compile_s"] > 0 and evidence["warm"]["prompt_shapes"] >= 1


def _gpu() -> str | None:
    try:
        import pynvml
        import torch

        pynvml.nvmlInit()
    except Exception as e:  # noqa: BLE001 - any failure means: no GPU to check here
        return f"no NVML ({e.__class__.__name__})"
    return None if torch.cuda.is_available() else "no CUDA device for torch"


@pytest.mark.gpu
@pytest.mark.skipif(_gpu() is not None, reason=f"needs an NVIDIA GPU: {_gpu()}")
def test_the_gpu_path_measures_with_nvml_and_agrees_with_the_counter(tmp_path: Path) -> None:
    report = check(tmp_path / "check", timeout=600)
    assert report["path"] == "gpu" and report["nvml"]["source"]["available"] is True
    for ms in (100, 20):
        run = report["runs"][f"gpu_chat@{ms}ms"]
        assert run["keep_rates"]["decode"]["keep_rate"] == 1.0 and run["stages"][0]["j_per_token"] > 0
        if run["counter_vs_polled"]["available"]:  # over a minute of decoding, both ways agree
            assert run["counter_vs_polled"]["stages"][0]["ratio"] == pytest.approx(1.0, abs=0.05)
    assert report["runs"]["gpu_chat@100ms"]["metrics"]["all_hold"] is True
    assert report["compile"]["evidence"]["compiles_measured"] == 0
