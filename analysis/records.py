"""Read a run directory's ``records.jsonl``: every valid line becomes a record, every bad line a warning."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from pydantic import ValidationError

from agent.core.record import RequestRecord
from agent.core.rundir import RunDir

__all__ = ["MAX_LINE_BYTES", "LoadedRecords", "bounded_lines", "load_records"]

#: Longest record line read; a record is kilobytes (its kept text at most ``max_output_chars``), so a
#: longer line is damage and is skipped with a warning rather than read whole.
MAX_LINE_BYTES = 64 << 20


@dataclass(slots=True)
class LoadedRecords:
    """Records in file order plus one warning per line that could not be read."""

    records: list[RequestRecord] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def bounded_lines(fh: BinaryIO, cap: int, block: int = 1 << 20) -> Iterator[tuple[int, bytes | None]]:
    """``(line number, line)`` for each line of a binary file; ``None`` for a line over ``cap`` bytes.

    Lines are read whole up to ``cap`` (the C reader, fast); the rest of a longer one is skipped in
    blocks, so no line costs more memory than ``cap`` bytes, whatever its length.
    """
    for lineno, line in enumerate(iter(lambda: fh.readline(cap + 1), b""), 1):
        if len(line) <= cap:
            yield lineno, line
            continue
        if not line.endswith(b"\n"):
            while data := fh.read(block):
                end = data.find(b"\n")
                if end >= 0:
                    fh.seek(end + 1 - len(data), io.SEEK_CUR)  # back to just after the newline
                    break
        yield lineno, None


def load_records(path: Path) -> LoadedRecords:
    """Load ``path`` (a records.jsonl or a run directory holding one)."""
    if path.is_dir():
        path = RunDir(path).records
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; pass a run directory written by `infermeter run`")
    out = LoadedRecords()
    with path.open("rb") as fh:
        for lineno, line in bounded_lines(fh, MAX_LINE_BYTES):
            if line is None:
                out.warnings.append(f"{path}:{lineno}: skipped a line over {MAX_LINE_BYTES >> 20} MiB")
                continue
            if not line.strip():
                continue
            try:
                out.records.append(RequestRecord.model_validate_json(line))
            except ValidationError as e:
                out.warnings.append(f"{path}:{lineno}: skipped unreadable record ({e.error_count()} errors)")
    return out
