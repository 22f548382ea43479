from __future__ import annotations

from pathlib import Path

import pytest

from agent.cli import main


def test_broken_scenario_is_one_clear_error_before_any_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nprompts: [hello]\nrequests: 3\nconcurency: 4\n")
    out = tmp_path / "run"
    code = main(
        ["run", str(bad), "--backend", "openai", "--base-url", "http://127.0.0.1:9", "--out", str(out)]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert f"{bad}:4" in err and "concurency" in err and "Extra inputs are not permitted" in err
    assert err.count("error:") == 1
    assert not out.exists()


def test_unknown_backend_suggests_a_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "micro", "--backend", "embeded", "--out", str(tmp_path / "r")])
    assert code == 2 and "Did you mean 'embedded'" in capsys.readouterr().err


def test_existing_run_dir_is_never_overwritten(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r"
    out.mkdir()
    (out / "records.jsonl").write_text("keep me\n")
    code = main(["run", "micro", "--out", str(out)])
    assert code == 2 and "already holds a run" in capsys.readouterr().err
    assert (out / "records.jsonl").read_text() == "keep me\n"


def test_scenarios_lists_the_library(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scenarios"]) == 0
    out = capsys.readouterr().out
    for name in ("chat", "agent_steps", "batch_prefill", "codegen", "long_context", "micro", "stress"):
        assert name in out
