"""Rotating sample files: bounded on disk, nothing lost below the bound, newest first."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from pydantic import BaseModel

from agent.core.errors import RecordWriteError
from exporters.jsonl import JsonlWriter, RotatingJsonl


class Line(BaseModel):
    n: int
    pad: str = "x" * 80


class Tiny(BaseModel):
    n: int


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


def test_a_full_device_is_one_error_naming_the_file() -> None:
    w = JsonlWriter(Path("/dev/full"))
    w.write(Tiny(n=1))
    with pytest.raises(RecordWriteError, match=r"cannot write /dev/full: No space left on device"):
        w.flush()
    assert w.count == 0
    w.close()


def test_a_write_cut_short_leaves_only_whole_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "records.jsonl"
    w = JsonlWriter(path)
    w.write(Tiny(n=1))
    w.flush()
    real_write = os.write
    calls = []

    def short_then_full(fd: int, data: bytes | memoryview) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[:20]))  # two whole lines (8 bytes each) and part of a third
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", short_then_full)
    for n in (2, 3, 4):
        w.write(Tiny(n=n))
    with pytest.raises(RecordWriteError):
        w.flush()
    monkeypatch.undo()
    w.close()
    assert path.read_text() == '{"n":1}\n{"n":2}\n{"n":3}\n'
    assert w.count == 3


def test_a_symbolic_link_is_refused_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    (tmp_path / "records.jsonl").symlink_to(target)
    with pytest.raises(RecordWriteError, match=r"records\.jsonl"):
        JsonlWriter(tmp_path / "records.jsonl")
    assert not target.exists()


def test_a_failed_sample_write_is_retried_on_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = RotatingJsonl(tmp_path, "s", max_bytes=10_000, keep=1)
    real_write = os.write

    def full(fd: int, data: bytes | memoryview) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(RecordWriteError):
        w.write(Tiny(n=1))
    monkeypatch.setattr(os, "write", real_write)
    w.write(Tiny(n=2))
    w.close()
    assert (tmp_path / "s.jsonl").read_text() == '{"n":2}\n'
