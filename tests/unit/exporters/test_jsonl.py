"""Rotating sample files: bounded on disk, nothing lost below the bound, newest first."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from exporters.jsonl import RotatingJsonl


class Line(BaseModel):
    n: int
    pad: str = "x" * 80


def test_files_rotate_at_the_size_cap_and_only_keep_survive(tmp_path: Path) -> None:
    w = RotatingJsonl(tmp_path, "samples", max_bytes=1024, keep=2)
    for n in range(100):
        w.write(Line(n=n))
    w.close()
    files = w.files()
    assert [p.name for p in files] == ["samples.jsonl", "samples.1.jsonl", "samples.2.jsonl"]
    assert all(p.stat().st_size <= 1024 for p in files)
    numbers = [json.loads(line)["n"] for p in reversed(files) for line in p.read_text().splitlines()]
    assert numbers == list(range(numbers[0], 100))  # contiguous, newest last, the oldest dropped whole
    assert len(list(tmp_path.iterdir())) == 3 and w.count == 100


def test_a_restart_appends_to_the_live_file_and_counts_its_size(tmp_path: Path) -> None:
    RotatingJsonl(tmp_path, "s", max_bytes=10_000, keep=1).write(Line(n=1))
    w = RotatingJsonl(tmp_path, "s", max_bytes=10_000, keep=1)
    w.write(Line(n=2))
    w.close()
    assert [json.loads(x)["n"] for x in (tmp_path / "s.jsonl").read_text().splitlines()] == [1, 2]
