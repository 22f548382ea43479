"""Drift on the real model: the quality suite (two prompts per task) on the embedded engine, a baseline, an
identical rerun and a degraded run (outputs truncated), scored with SemScore by `infermeter analyze`."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from analysis.quality import tier_of
from tests.integration.conftest import ROOT, read_records, run_cli

pytestmark = pytest.mark.slow


def suite_subset(path: Path, per_task: int = 2) -> Path:
    prompts = yaml.safe_load((ROOT / "scenarios" / "data" / "quality.yaml").read_text())
    picked: dict[str, list[dict[str, str]]] = defaultdict(list)
    for p in prompts:
        if len(picked[p["task"]]) < per_task:
            picked[p["task"]].append(p)
    scenario = yaml.safe_load((ROOT / "scenarios" / "quality.yaml").read_text())
    chosen = [p for rows in picked.values() for p in rows]
    scenario.update(prompts=chosen, requests=len(chosen), output_tokens=32)
    path.write_text(yaml.safe_dump(scenario, sort_keys=False))
    return path


def run(scenario: Path, out: Path, cache_dir: Path, *extra: str) -> None:
    proc = run_cli(["run", str(scenario), "--out", str(out), "--no-progress", *extra], cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = read_records(out)
    assert len(records) == 12 and all(r["status"] == "ok" and r["output_text"] for r in records)


def test_identical_rerun_is_not_drift_and_truncation_is(tmp_path: Path, cache_dir: Path) -> None:
    scenario = suite_subset(tmp_path / "quality12.yaml")
    run(scenario, tmp_path / "base", cache_dir)
    run(scenario, tmp_path / "rerun", cache_dir)
    run(scenario, tmp_path / "truncated", cache_dir, "--max-tokens", "6")

    out = tmp_path / "report"
    proc = run_cli(
        [
            "analyze",
            str(tmp_path / "rerun"),
            str(tmp_path / "truncated"),
            "--baseline",
            str(tmp_path / "base"),
            "--out",
            str(out),
            "--no-progress",
            "--fail-on",
            "drift",
            "--usd-per-hour",
            "0.5",
        ],
        cache_dir,
    )
    assert proc.returncode == 3, proc.stderr[-3000:]  # the truncated run drifted
    assert "truncated: quality fell to tier" in proc.stderr or "truncated: outputs drifted" in proc.stderr
    assert "rerun:" not in proc.stderr
    result = json.loads((out / "summary.json").read_text())
    quality = result["quality"]
    assert quality["semscore_model"] and quality["semscore_unavailable"] is None

    rerun = quality["drift"]["rerun"]
    assert rerun["prompts_shared"] == 12
    assert rerun["identical_rate"] == 1.0 and rerun["output_semscore"] == pytest.approx(1.0, abs=1e-4)
    assert rerun["drifted"] is False and rerun["tier"] == "negligible"
    # the engine's top-5 logprobs of the first tokens were recorded: the same model gives KL 0
    first = read_records(tmp_path / "base")[0]["top_logprobs"]
    assert 1 <= len(first) <= 10 and all(1 <= len(position) <= 5 for position in first)
    assert rerun["kl_first_tokens"] == {"mean": 0.0, "max": 0.0, "prompts": 12}
    for task in rerun["tasks"].values():
        assert task["generation_delta_pct"] in (None, 0.0) and task["benchmark_delta_points"] in (None, 0.0)

    cut = quality["drift"]["truncated"]
    assert cut["identical_rate"] < 0.5 and cut["drifted"] is True
    assert cut["tier"] in ("concerning", "unacceptable")
    # truncation changes how much is decoded, not the model: its first-token distributions are the same
    assert cut["kl_first_tokens"]["max"] == pytest.approx(0.0, abs=1e-9)
    for task in cut["tasks"].values():  # each task's tier is the worse of its two deltas
        assert task["tier"] == tier_of(task["benchmark_delta_points"], task["generation_delta_pct"])
    assert all(r["output_tokens"] <= 6 for r in read_records(tmp_path / "truncated"))  # degraded as made

    assert result["verdicts"]["truncated"]["worse"] + result["verdicts"]["truncated"]["better"] >= 1
    assert result["cost"]["base"]["quality"]["usd_per_1m_output_tokens"] > 0
    report = (out / "report.md").read_text()
    assert "### Drift: rerun vs baseline — outputs identical, quality tier **negligible**" in report
    assert "### Drift: truncated vs baseline — outputs drifted" in report
    assert (out / "latency_cdf_quality.png").is_file()
