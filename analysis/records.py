"""Read a run directory's ``records.jsonl``: every valid line becomes a record, every bad line a warning."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from agent.core.record import RequestRecord

__all__ = ["LoadedRecords", "load_records"]


@dataclass(slots=True)
class LoadedRecords:
    """Records in file order plus one warning per line that could not be read."""

    records: list[RequestRecord] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def load_records(path: Path) -> LoadedRecords:
    """Load ``path`` (a records.jsonl or a run directory holding one)."""
    if path.is_dir():
        path = path / "records.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; pass a run directory written by `infermeter run`")
    out = LoadedRecords()
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                out.records.append(RequestRecord.model_validate_json(line))
            except ValidationError as e:
                out.warnings.append(f"{path}:{lineno}: skipped unreadable record ({e.error_count()} errors)")
    return out
