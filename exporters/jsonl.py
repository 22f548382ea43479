"""Append-only JSONL record files: one line per record (request or chain), and only whole lines."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from types import TracebackType

from pydantic import BaseModel
from pydantic_core import PydanticSerializationError

from agent.core.errors import RecordWriteError
from agent.core.text import clean_obj

__all__ = ["JsonlWriter", "LineFile", "RotatingJsonl", "open_new"]

#: Buffered lines are handed to the operating system at this size even before ``flush``.
FLUSH_BYTES = 1 << 20

_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW


def open_new(path: Path, flags: int = _APPEND) -> int:
    """Open ``path`` for appending without following a symbolic link; the error names the file."""
    try:
        return os.open(path, flags, 0o644)
    except OSError as e:
        raise RecordWriteError(path, e) from e


def _line(record: BaseModel) -> bytes:
    """One JSON line; text that JSON in UTF-8 cannot hold (a lone surrogate) is cleaned, never fatal."""
    try:
        return record.__pydantic_serializer__.to_json(record) + b"\n"
    except (PydanticSerializationError, UnicodeError):
        data = clean_obj(record.model_dump(mode="python"))
        if "text_sanitized" in type(record).model_fields:
            data["text_sanitized"] = True
        return json.dumps(data, ensure_ascii=False, default=str).encode("utf-8") + b"\n"


class LineFile:
    """An append-only file of lines, written with one system call per flush.

    A write that fails part-way (disk full, file size limit) takes back the torn line with
    ``ftruncate``, so the file only ever holds whole lines; the failure is a ``RecordWriteError``
    naming the file, and ``count`` is the number of lines that reached the operating system.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self._fd: int | None = open_new(path)
        self._size = os.fstat(self._fd).st_size
        self._lines: list[bytes] = []
        self._bytes = 0

    @property
    def size(self) -> int:
        """Bytes in the file, once what is buffered is flushed."""
        return self._size + self._bytes

    def add(self, line: bytes) -> None:
        """Buffer one line (ending in a newline); flushed at ``FLUSH_BYTES`` or by ``flush``."""
        if self._fd is None:
            raise ValueError(f"{self.path} is closed")
        self._lines.append(line)
        self._bytes += len(line)
        if self._bytes >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        """Hand every buffered line to the operating system."""
        if not self._lines or self._fd is None:
            return
        lines = len(self._lines)
        data = b"".join(self._lines) if lines > 1 else self._lines[0]
        self._lines.clear()
        self._bytes = 0
        view = memoryview(data)
        done = 0
        try:
            while done < len(data):
                done += os.write(self._fd, view[done:])
        except OSError as e:
            whole = data.rfind(b"\n", 0, done) + 1
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size + whole)
            self._size += whole
            self.count += data.count(b"\n", 0, whole)
            raise RecordWriteError(self.path, e) from e
        self._size += len(data)
        self.count += lines

    def close(self) -> None:
        """Flush and close; safe to call twice. The file is closed even when the flush fails."""
        if self._fd is None:
            return
        try:
            self.flush()
        finally:
            os.close(self._fd)
            self._fd = None


class JsonlWriter:
    """Appends records to ``path``, one line each.

    ``write`` buffers; ``flush`` hands the buffered lines to the operating system. The runner flushes
    after each turn of its record writer, which keeps up with any load (see ``agent.run.runner``), so a
    killed run loses only the last moments' records; ``close`` flushes the rest. A symbolic link at
    ``path`` is refused, never followed.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = LineFile(path)

    @property
    def count(self) -> int:
        """Records handed to the operating system."""
        return self._file.count

    def write(self, record: BaseModel) -> None:
        """Append one record (buffered until ``flush`` or ``close``)."""
        self._file.add(_line(record))

    def flush(self) -> None:
        """Hand every buffered line to the operating system."""
        self._file.flush()

    def close(self) -> None:
        """Close the file; safe to call twice."""
        self._file.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
            return
        with contextlib.suppress(RecordWriteError):  # the error already on its way says it
            self.close()


class RotatingJsonl:
    """Appends records to ``dir/name.jsonl``; at ``max_bytes`` the file becomes ``name.1.jsonl`` and so on.

    At most ``keep`` rotated files stay beside the live one (the oldest is deleted), so a daemon that
    samples for months holds at most ``(keep + 1) × max_bytes`` on disk. Each line is flushed, whole or
    not at all; a failed write raises ``RecordWriteError`` and the next write tries again.
    """

    def __init__(self, directory: Path, name: str, *, max_bytes: int, keep: int) -> None:
        self.directory = directory
        self.name = name
        self.max_bytes = max_bytes
        self.keep = keep
        self.count = 0
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RecordWriteError(directory, e) from e
        self.path = directory / f"{name}.jsonl"
        self._file: LineFile | None = None

    def write(self, record: BaseModel) -> None:
        """Append one record, rotating first when it would push the live file past ``max_bytes``."""
        line = _line(record)
        if self._file is None:
            self._file = LineFile(self.path)
        if self._file.size and self._file.size + len(line) > self.max_bytes:
            self._rotate()
            self._file = LineFile(self.path)
        self._file.add(line)
        self._file.flush()
        self.count += 1

    def files(self) -> list[Path]:
        """The live file and the rotated ones, newest first."""
        rotated = [self.directory / f"{self.name}.{i}.jsonl" for i in range(1, self.keep + 1)]
        return [p for p in [self.path, *rotated] if p.exists()]

    def _rotate(self) -> None:
        self.close()
        try:
            oldest = self.directory / f"{self.name}.{self.keep}.jsonl"
            oldest.unlink(missing_ok=True)
            for i in range(self.keep - 1, 0, -1):
                src = self.directory / f"{self.name}.{i}.jsonl"
                if src.exists():
                    src.rename(self.directory / f"{self.name}.{i + 1}.jsonl")
            self.path.rename(self.directory / f"{self.name}.1.jsonl")
        except OSError as e:
            raise RecordWriteError(self.path, e) from e

    def close(self) -> None:
        """Close the live file; safe to call twice (the next write reopens it)."""
        if self._file is not None:
            file, self._file = self._file, None
            file.close()
