"""Append-only JSONL record files: one line per record (request or chain)."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import IO

from pydantic import BaseModel

__all__ = ["JsonlWriter", "RotatingJsonl"]


class JsonlWriter:
    """Appends records to ``path``, one line each.

    ``write`` buffers; ``flush`` hands the buffered lines to the operating system. The runner flushes
    after every batch it writes (within a millisecond or so of a request's end), so a killed run loses
    no record it had written; ``close`` flushes the rest.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[str] | None = path.open("a", encoding="utf-8")

    def write(self, record: BaseModel) -> None:
        """Append one record (buffered until ``flush`` or ``close``)."""
        if self._fh is None:
            raise ValueError(f"{self.path} is closed")
        self._fh.write(record.model_dump_json() + "\n")
        self.count += 1

    def flush(self) -> None:
        """Hand every buffered line to the operating system."""
        if self._fh is not None:
            self._fh.flush()

    def close(self) -> None:
        """Close the file; safe to call twice."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class RotatingJsonl:
    """Appends records to ``dir/name.jsonl``; at ``max_bytes`` the file becomes ``name.1.jsonl`` and so on.

    At most ``keep`` rotated files stay beside the live one (the oldest is deleted), so a daemon that
    samples for months holds at most ``(keep + 1) × max_bytes`` on disk. Each line is flushed.
    """

    def __init__(self, directory: Path, name: str, *, max_bytes: int, keep: int) -> None:
        self.directory = directory
        self.name = name
        self.max_bytes = max_bytes
        self.keep = keep
        self.count = 0
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{name}.jsonl"
        self._fh: IO[str] | None = None
        self._size = self.path.stat().st_size if self.path.exists() else 0

    def write(self, record: BaseModel) -> None:
        """Append one record, rotating first when it would push the live file past ``max_bytes``."""
        line = record.model_dump_json() + "\n"
        size = len(line.encode())
        if self._size and self._size + size > self.max_bytes:
            self._rotate()
        if self._fh is None:
            self._fh = self.path.open("a", encoding="utf-8")
        self._fh.write(line)
        self._fh.flush()
        self._size += size
        self.count += 1

    def files(self) -> list[Path]:
        """The live file and the rotated ones, newest first."""
        rotated = [self.directory / f"{self.name}.{i}.jsonl" for i in range(1, self.keep + 1)]
        return [p for p in [self.path, *rotated] if p.exists()]

    def _rotate(self) -> None:
        self.close()
        oldest = self.directory / f"{self.name}.{self.keep}.jsonl"
        oldest.unlink(missing_ok=True)
        for i in range(self.keep - 1, 0, -1):
            src = self.directory / f"{self.name}.{i}.jsonl"
            if src.exists():
                src.rename(self.directory / f"{self.name}.{i + 1}.jsonl")
        self.path.rename(self.directory / f"{self.name}.1.jsonl")
        self._size = 0

    def close(self) -> None:
        """Close the live file; safe to call twice (the next write reopens it)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
