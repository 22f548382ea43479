"""Append-only JSONL record files: one line per record (request or chain), flushed as each completes."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import IO

from pydantic import BaseModel

__all__ = ["JsonlWriter"]


class JsonlWriter:
    """Appends records to ``path``; each line is flushed so a killed run loses no completed record."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[str] | None = path.open("a", encoding="utf-8")

    def write(self, record: BaseModel) -> None:
        """Append one record and flush it to the operating system."""
        if self._fh is None:
            raise ValueError(f"{self.path} is closed")
        self._fh.write(record.model_dump_json() + "\n")
        self._fh.flush()
        self.count += 1

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
