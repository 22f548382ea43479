"""Every output derived from the recorded runs is byte-equal to the one kept (see ``tests/outputs.py``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.outputs import EXPECTED, TEXT, digests, produce

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    return produce(tmp_path_factory.mktemp("outputs"))


def test_every_command_on_the_recorded_runs_succeeds(outputs: dict[str, bytes]) -> None:
    failed = {
        k: v.decode()[:600] for k, v in outputs.items() if k.endswith(".txt") and not v.startswith(b"exit 0")
    }
    assert not failed, failed


def test_text_outputs_are_the_ones_kept(outputs: dict[str, bytes]) -> None:
    kept = sorted(p.name for p in EXPECTED.iterdir() if p.name != "digests.json")
    assert sorted(k for k in outputs if k.endswith(TEXT)) == kept
    for name in kept:
        assert outputs[name].decode() == (EXPECTED / name).read_text(), (
            f"{name} changed; if that is meant, run `python -m tests.outputs --update` and review the diff"
        )


def test_figures_and_html_are_the_ones_kept(outputs: dict[str, bytes]) -> None:
    kept = json.loads((EXPECTED / "digests.json").read_text())
    changed = {k: v for k, v in digests(outputs).items() if kept.get(k) != v}
    assert set(digests(outputs)) == set(kept) and not changed, (
        f"{sorted(changed)} changed; if that is meant, run `python -m tests.outputs --update`"
    )


def test_the_recorded_runs_hold_records_only(outputs: dict[str, bytes]) -> None:
    """The inputs are what a run recorded; nothing the commands derive is stored beside them."""
    root = EXPECTED.parent
    derived = [p for p in root.rglob("*") if p.name in ("report.html", "report.md", "study.json")]
    derived += [p for p in root.glob("*/summary.json")]
    assert not derived and Path(root / "a" / "records.jsonl").is_file()
