"""Every output derived from the recorded runs is the one kept (see ``tests/outputs.py``): byte-equal,
except that a printed float may move in its last digits with the numpy and scipy releases installed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.outputs import EXPECTED, TEXT, differences, digests, produce

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
        changed = differences((EXPECTED / name).read_text(), outputs[name].decode())
        assert not changed, (
            f"{name} changed ({changed[0][0][:200]!r} → {changed[0][1][:200]!r}); if that is meant, "
            "run `python -m tests.outputs --update` and review the diff"
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


def test_only_the_last_digits_of_a_float_may_move() -> None:
    assert differences('{"f": 14206.661854891618}', '{"f": 14206.661854904525}') == []
    assert differences('{"f": 14206.66}', '{"f": 14206.67}') == [("14206.66", "14206.67")]
    assert differences('{"n": 12, "x": 1.5}', '{"n": 13, "x": 1.5}') != []
