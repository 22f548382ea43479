"""Outputs written whole or not at all; the headroom a run sets aside is what lets a full disk still
take its last manifest."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from agent.core import files
from agent.core.files import HEADROOM_NAME, Headroom, release_headroom, write_atomic


def test_a_write_is_whole_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "summary.json"
    write_atomic(target, "first")
    write_atomic(target, b"second")
    assert target.read_text() == "second" and sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]
    write_atomic(tmp_path / "lone.txt", "a\ud800b")  # a lone surrogate a server sent: written, not fatal
    assert (tmp_path / "lone.txt").read_bytes() == b"a?b"


def test_a_full_disk_gives_back_the_headroom_and_the_write_goes_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    room = Headroom.claim(tmp_path)
    assert room is not None and (tmp_path / HEADROOM_NAME).stat().st_size == files.HEADROOM_BYTES
    real, fails = os.write, {"left": 1}

    def full_once(fd: int, data: object) -> int:
        if fails["left"]:
            fails["left"] -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "write", full_once)
    write_atomic(tmp_path / "manifest.json", "{}")
    assert (tmp_path / "manifest.json").read_text() == "{}"
    assert not (tmp_path / HEADROOM_NAME).exists(), "the headroom was given back for the write"
    assert release_headroom(tmp_path) is False  # nothing left to give


def test_without_headroom_a_full_disk_is_one_error_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError, match="No space left on device") as e:
        write_atomic(tmp_path / "report.md", "x")
    assert e.value.filename == str(tmp_path / "report.md")
    assert list(tmp_path.iterdir()) == []  # no half file, no *.tmp
