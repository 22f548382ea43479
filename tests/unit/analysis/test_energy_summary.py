"""The summary's energy block: J/token only from macro windows with coverage; unavailable said plainly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.core.record import RequestRecord
from analysis.render.summary import energy_line
from analysis.results import EnergySummary
from analysis.summary import summarize


def rec(n: int, **over: Any) -> RequestRecord:
    base: dict[str, Any] = {
        "run_id": "r",
        "scenario": "chat",
        "request_id": f"r{n}",
        "seq": n,
        "backend": "sim",
        "model": "m",
        "endpoint": "chat",
        "status": "ok",
        "intended_offset_ms": 0.0,
        "sent_offset_ms": 0.0,
        "schedule_lag_ms": 0.0,
        "sent_unix_s": 0.0,
        "ttft_ms": 10.0,
        "e2e_ms": 100.0,
        "output_tokens": 100,
    }
    return RequestRecord(**(base | over))


def write_run(tmp_path: Path, stages: list[dict[str, Any]], status: str = "measured") -> Path:
    (tmp_path / "manifest.json").write_text(json.dumps({"energy": {"status": status}}))
    (tmp_path / "energy.json").write_text(
        json.dumps({"baseline": {"mean_w": 20}, "poller": {}, "stages": stages})
    )
    return tmp_path


def test_j_per_token_comes_from_the_macro_window(tmp_path: Path) -> None:
    run = write_run(tmp_path, [{"stage": "steady", "quality": "good", "energy_j": 500.0, "samples": 50}])
    records = [rec(i, energy_quality="good" if i % 4 else "no_data") for i in range(8)]
    energy = summarize(records, run_dir=run).dump()["energy"]
    (stage,) = energy["stages"]
    assert stage["output_tokens"] == 800 and stage["j_per_token"] == pytest.approx(500 / 800)
    assert stage["kwh_per_1m_tokens"] == pytest.approx(500 / 800 * 1e6 / 3.6e6)
    assert energy["requests"]["by_quality"] == {"good": 6, "no_data": 2}
    assert energy["requests"]["no_data_share"] == pytest.approx(0.25)
    assert "0.625 J/token" in energy_line(
        EnergySummary.model_validate(energy)
    ) and "without data 25 %" in energy_line(EnergySummary.model_validate(energy))


def test_a_macro_window_without_coverage_gives_no_j_per_token(tmp_path: Path) -> None:
    run = write_run(tmp_path, [{"stage": "steady", "quality": "no_data", "energy_j": None, "samples": 1}])
    energy = summarize([rec(0)], run_dir=run).dump()["energy"]
    assert energy["stages"][0]["j_per_token"] is None and "no J/token" in energy_line(
        EnergySummary.model_validate(energy)
    )


def test_unavailable_energy_is_reported_as_such(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(
        json.dumps({"energy": {"status": "unavailable — NVML not found"}})
    )
    energy = summarize([rec(0)], run_dir=tmp_path).dump()["energy"]
    assert energy == {"status": "unavailable — NVML not found"}
    assert energy_line(EnergySummary.model_validate(energy)).endswith("unavailable — NVML not found")
    assert "energy" not in summarize([rec(0)]).dump()
