"""Output files written whole or not at all, and the headroom that lets a full disk still say what happened.

``write_atomic`` writes a fresh temporary file beside the target and renames it over the target, so a
reader sees the old file or the new one, never half of either; the temporary file is created new
(nothing there is followed or written through) and removed again when the write fails.

A run on a disk that fills up must still mark its manifest ``failed`` and write its summary, which
needs a little space after there is none. ``Headroom.claim`` sets aside a small file in the run's
directory when the run starts; a write there that fails for want of space releases it and tries once
more, and the run releases it at its end in any case.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

__all__ = ["HEADROOM_BYTES", "HEADROOM_NAME", "Headroom", "release_headroom", "write_atomic"]

#: Space set aside per run directory: the final manifest and summary need tens of kilobytes.
HEADROOM_BYTES = 1 << 20
HEADROOM_NAME = ".infermeter-headroom"
#: Write failures that more space would cure.
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_EXCL = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_claimed: dict[Path, Headroom] = {}


class Headroom:
    """A file of ``HEADROOM_BYTES`` set aside in a directory, given back when space runs out."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / HEADROOM_NAME

    @classmethod
    def claim(cls, directory: Path, size: int = HEADROOM_BYTES) -> Headroom | None:
        """Set ``size`` bytes aside in ``directory`` (less on a nearly full disk, down to a sixteenth).

        None when even that is not possible: there is no space already.
        """
        for part in (size, size // 4, size // 16):
            room = cls._claim(directory, part)
            if room is not None:
                return room
        return None

    @classmethod
    def _claim(cls, directory: Path, size: int) -> Headroom | None:
        room = cls(directory)
        with contextlib.suppress(FileNotFoundError):
            room.path.unlink()  # one left by a run that was killed
        try:
            fd = os.open(room.path, _EXCL, 0o600)
        except OSError:
            return None
        try:
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as e:  # a file system without fallocate: write the blocks instead
                if e.errno in _NO_SPACE:
                    raise
                _write_all(fd, bytes(size))
        except OSError:
            os.close(fd)
            room.release()
            return None
        os.close(fd)
        _claimed[directory.resolve()] = room
        return room

    def release(self) -> bool:
        """Give the space back; True when there was some to give."""
        _claimed.pop(self.path.parent.resolve(), None)
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        return True


def release_headroom(directory: Path) -> bool:
    """Give back the space set aside in ``directory``, if any; True when some was given back."""
    room = _claimed.get(directory.resolve())
    return room.release() if room is not None else False


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _write_once(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        fd = os.open(tmp, _EXCL, 0o644)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` whole or not at all; on a full disk, with the directory's headroom."""
    # text that UTF-8 cannot hold (a lone surrogate a server sent, read back from a manifest) is never
    # a reason to lose a report: it is written as "?"
    body = data.encode("utf-8", errors="replace") if isinstance(data, str) else data
    try:
        try:
            _write_once(path, body)
        except OSError as e:
            if e.errno not in _NO_SPACE or not release_headroom(path.parent):
                raise
            _write_once(path, body)
    except OSError as e:  # the error names the file the user asked for, not the temporary one
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e
