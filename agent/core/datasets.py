"""Workload datasets: ShareGPT JSON, JSONL, JSON, CSV, Parquet and Hugging Face ``datasets`` on disk.

Every file becomes a list of :class:`Conversation`: a single-turn row is a conversation of one turn. Only
local files are read, never a hub download; every problem is one ``ConfigError`` naming the file and the
row, raised while the scenario loads, before a run directory exists.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.core.errors import ConfigError
from agent.core.record import Turn

__all__ = [
    "MAX_ROW_BYTES",
    "Columns",
    "Conversation",
    "DatasetFormat",
    "LoadedDataset",
    "read_dataset",
]

#: Largest row (a JSONL line, a CSV field, one text of a conversation) a dataset may hold: no prompt a
#: server accepts comes near it, and a larger one is a broken file, not a workload.
MAX_ROW_BYTES = 16 * 1024 * 1024
#: Largest single-document JSON file read whole (ShareGPT's full release is about 650 MB).
MAX_JSON_BYTES = 2 * 1024 * 1024 * 1024

#: Files a folder of data files (``load_dataset`` over local files) may hold.
_DATA_FILES = frozenset({".parquet", ".jsonl", ".json", ".csv", ".arrow"})

DatasetFormat = Literal["auto", "sharegpt", "jsonl", "json", "csv", "parquet", "hf"]

#: Columns tried, in order, when the mapping leaves one out.
_GUESS: dict[str, tuple[str, ...]] = {
    "prompt": ("prompt", "text", "question", "input", "instruction", "query"),
    "answer": ("answer", "response", "output", "completion", "target"),
    "messages": ("conversations", "conversation", "messages"),
    "id": ("id", "conversation_id", "session_id"),
}
_USER = {"human", "user"}
_ASSISTANT = {"gpt", "assistant", "bot", "model", "chatgpt"}


class Columns(BaseModel):
    """Which column holds what; unset ones are guessed from common names (``prompt``, ``question``…)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = Field(None, description="the user's text")
    answer: str | None = Field(None, description="the dataset's answer (its length is the output target)")
    system: str | None = Field(None, description="a system prompt per row")
    output_tokens: str | None = Field(None, description="an output length per row, in tokens")
    messages: str | None = Field(
        None, description="a whole conversation per row: [{from, value}] (ShareGPT) or [{role, content}]"
    )
    conversation: str | None = Field(None, description="conversation id: rows with one id are its turns")
    turn: str | None = Field(None, description="turn number within a conversation (rows sorted by it)")
    timestamp: str | None = Field(
        None, description="seconds; gaps between a conversation's turns are think time"
    )
    id: str | None = Field(None, description="a stable id per row or conversation")


@dataclass(frozen=True, slots=True)
class Conversation:
    """One conversation of a dataset (a single-turn row is a conversation of one turn)."""

    id: str
    #: the first turn's text, then the rest as turns
    turns: tuple[Turn, ...]
    system: str | None = None


@dataclass(slots=True)
class LoadedDataset:
    """A dataset read from disk, with the identity the manifest keeps."""

    path: Path
    format: str
    conversations: list[Conversation]
    sha256: str
    bytes: int
    rows: int
    skipped: dict[str, int] = field(default_factory=dict)

    def identity(self) -> dict[str, object]:
        """Path, format, size, digest and counts, for the manifest."""
        return {
            "path": str(self.path),
            "format": self.format,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "rows": self.rows,
            "conversations": len(self.conversations),
            "turns": sum(len(c.turns) for c in self.conversations),
            "skipped": dict(self.skipped),
        }


def _fail(path: Path, problem: str, row: int | None = None) -> ConfigError:
    where = f"{path}:{row}" if row is not None else str(path)
    return ConfigError(problem, location=where)


def _digest(path: Path) -> tuple[str, int]:
    """sha256 and size of a file, or of every file under a directory (sorted by relative path)."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    size = 0
    for f in files:
        if f != path:
            h.update(str(f.relative_to(path)).encode())
        with f.open("rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
                size += len(block)
    return h.hexdigest(), size


def _detect(path: Path) -> str:
    if path.is_dir():
        return "hf"
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix == ".json":
        return "json"
    raise _fail(
        path,
        f"cannot tell the format from '{suffix or 'no suffix'}'; give format: jsonl, json, "
        "sharegpt, csv, parquet or hf",
    )


def _text(value: Any, path: Path, row: int, what: str) -> str | None:
    """A text cell: strings kept, numbers written out, anything else refused; too large a cell refused."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _fail(path, f"{what} is {type(value).__name__}, not text", row)
    text = str(value)
    if len(text) > MAX_ROW_BYTES // 4 and len(text.encode("utf-8", "surrogatepass")) > MAX_ROW_BYTES:
        raise _fail(path, f"{what} is larger than {MAX_ROW_BYTES >> 20} MiB: not a prompt", row)
    return text


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, object]]]:
    """Objects of a JSONL file with their line numbers; an over-long or undecodable line is an error."""
    with path.open("rb") as fh:
        for n, raw in enumerate(iter(lambda: fh.readline(MAX_ROW_BYTES + 1), b""), start=1):
            if len(raw) > MAX_ROW_BYTES and not raw.endswith(b"\n"):
                raise _fail(path, f"line is larger than {MAX_ROW_BYTES >> 20} MiB: not a dataset row", n)
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise _fail(path, f"not UTF-8 text (byte {e.start} of the line)", n) from e
            except ValueError as e:
                raise _fail(path, f"not JSON: {e}", n) from e
            if not isinstance(obj, dict):
                raise _fail(path, "each line must be a JSON object", n)
            yield n, obj


def _read_json(path: Path) -> Iterator[tuple[int, dict[str, object]]]:
    """Objects of a JSON file holding a list of rows (ShareGPT's layout), numbered from 1."""
    if path.stat().st_size > MAX_JSON_BYTES:
        raise _fail(
            path, f"a JSON file over {MAX_JSON_BYTES >> 30} GiB is not read whole; convert it to JSONL"
        )
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise _fail(path, f"not UTF-8 text (byte {e.start})") from e
    except ValueError as e:
        raise _fail(path, f"not JSON: {e}") from e
    if isinstance(data, dict):  # {"data": [...]} and similar wrappers
        lists = [v for v in data.values() if isinstance(v, list)]
        data = lists[0] if len(lists) == 1 else data
    if not isinstance(data, list):
        raise _fail(path, "a JSON dataset must be a list of rows (objects)")
    for n, obj in enumerate(data, start=1):
        if not isinstance(obj, dict):
            raise _fail(path, f"row {n} is {type(obj).__name__}, not an object", n)
        yield n, obj


def _read_csv(path: Path) -> Iterator[tuple[int, dict[str, object]]]:
    csv.field_size_limit(MAX_ROW_BYTES)
    try:
        with path.open(encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            n = 1
            try:
                for n, row in enumerate(reader, start=2):
                    yield n, {k: (v if v != "" else None) for k, v in row.items() if k is not None}
            except csv.Error as e:
                raise _fail(
                    path, f"unreadable CSV ({e}); fields are limited to {MAX_ROW_BYTES >> 20} MiB", n + 1
                ) from e
    except UnicodeDecodeError as e:
        raise _fail(path, f"not UTF-8 text (byte {e.start})") from e


def _arrow_rows(table: Any) -> Iterator[tuple[int, dict[str, object]]]:
    yield from enumerate(table.to_pylist(), start=1)


def _read_parquet(path: Path) -> Iterator[tuple[int, dict[str, object]]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise _fail(path, "reading Parquet needs pyarrow: pip install 'infermeter[datasets]'") from e
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises its own ArrowInvalid, OSError and more for a broken file
        raise _fail(path, f"not a readable Parquet file: {e}") from e
    yield from _arrow_rows(table)


def _read_hf(path: Path, split: str | None) -> Iterator[tuple[int, dict[str, object]]]:
    """A Hugging Face dataset saved with ``save_to_disk``, or a folder of data files for ``load_dataset``."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # never a hub download: local files only
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import datasets
    except ImportError as e:
        raise _fail(
            path, "reading a Hugging Face dataset needs `datasets`: pip install 'infermeter[datasets]'"
        ) from e
    datasets.disable_progress_bars()
    saved = (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()
    if not saved and not any(p.suffix.lower() in _DATA_FILES for p in path.rglob("*") if p.is_file()):
        raise _fail(
            path,
            "not a Hugging Face dataset on disk: no dataset_info.json (save_to_disk) and no data "
            f"files ({', '.join(sorted(_DATA_FILES))}) in it",
        )
    try:
        if saved:
            ds = datasets.load_from_disk(str(path))
        else:
            with tempfile.TemporaryDirectory(prefix="infermeter-dataset-") as cache:
                ds = datasets.load_dataset(str(path), cache_dir=cache, keep_in_memory=True)
    except Exception as e:  # datasets raises many kinds (FileNotFoundError, DataFilesNotFoundError, …)
        raise _fail(
            path,
            f"not a Hugging Face dataset on disk ({e.__class__.__name__}: {e}); save one with "
            "Dataset.save_to_disk(), or point at its data files (JSONL, CSV, Parquet)",
        ) from e
    if isinstance(ds, datasets.DatasetDict):
        splits = list(ds)
        chosen = split or ("train" if "train" in ds else splits[0] if len(splits) == 1 else None)
        if chosen not in ds:
            raise _fail(path, f"choose a split: split: {' | '.join(splits)}")
        ds = ds[chosen]
    yield from _arrow_rows(ds.data)


def _rows(path: Path, fmt: str, split: str | None) -> Iterator[tuple[int, dict[str, object]]]:
    if fmt == "jsonl":
        return _read_jsonl(path)
    if fmt in ("json", "sharegpt"):
        return _read_json(path) if path.suffix.lower() != ".jsonl" else _read_jsonl(path)
    if fmt == "csv":
        return _read_csv(path)
    if fmt == "parquet":
        return _read_parquet(path)
    return _read_hf(path, split)


def _column(row: dict[str, object], chosen: str | None, kind: str) -> str | None:
    """The column name to read for ``kind``: the mapping's, else the first common name the row has."""
    if chosen is not None:
        return chosen
    return next((c for c in _GUESS.get(kind, ()) if c in row), None)


def _messages(value: Any, path: Path, row: int) -> tuple[list[Turn], str | None]:
    """Turns from ``[{from, value}]`` (ShareGPT) or ``[{role, content}]``; a leading system message apart.

    A conversation is cut at its first turn out of order (two users in a row) or with no text, as
    vLLM's benchmark reads ShareGPT: what comes before that point is kept.
    """
    if not isinstance(value, list):
        raise _fail(path, f"the conversation is {type(value).__name__}, not a list of messages", row)
    system: str | None = None
    turns: list[Turn] = []
    pending: str | None = None
    for i, msg in enumerate(value):
        if not isinstance(msg, dict):
            raise _fail(path, f"message {i} is {type(msg).__name__}, not an object", row)
        role = str(msg.get("from", msg.get("role", ""))).lower()
        text = _text(msg.get("value", msg.get("content")), path, row, f"message {i}")
        if role == "system" and i == 0:
            system = text or None
        elif role in _USER and pending is None and text:
            pending = text
        elif role in _ASSISTANT and pending is not None and text:
            turns.append(Turn(pending, answer=text))
            pending = None
        else:
            break
    if pending is not None:
        turns.append(Turn(pending))
    return turns, system


def _one(
    row: dict[str, object], cols: Columns, path: Path, n: int
) -> tuple[str | None, Turn | None, list[Turn], str | None]:
    """(conversation key, single turn, whole-conversation turns, system) of one row."""
    system = _text(row.get(cols.system), path, n, f"column '{cols.system}'") if cols.system else None
    messages = _column(row, cols.messages, "messages")
    if messages is not None and cols.prompt is None:
        turns, sys_msg = _messages(row[messages], path, n)
        return None, None, turns, system or sys_msg
    prompt_col = _column(row, cols.prompt, "prompt")
    if prompt_col is None or prompt_col not in row:
        raise _fail(
            path,
            f"no prompt column: the row has {', '.join(sorted(map(str, row))) or 'no columns'}; "
            "map one with columns: {prompt: NAME}",
            n,
        )
    text = _text(row[prompt_col], path, n, f"column '{prompt_col}'")
    answer_col = _column(row, cols.answer, "answer")
    answer = _text(row.get(answer_col), path, n, f"column '{answer_col}'") if answer_col else None
    out_tokens = (
        _count(row.get(cols.output_tokens), path, n, cols.output_tokens) if cols.output_tokens else None
    )
    think = _seconds(row.get(cols.timestamp), path, n, cols.timestamp) if cols.timestamp else None
    key = (
        str(row[cols.conversation]) if cols.conversation and row.get(cols.conversation) is not None else None
    )
    turn = Turn(text, answer=answer, output_tokens=out_tokens, think_s=think) if text else None
    return key, turn, [], system


def _count(value: Any, path: Path, row: int, col: str | None) -> int | None:
    if value is None:
        return None
    try:
        n = int(value)
    except (TypeError, ValueError) as e:
        raise _fail(path, f"column '{col}' holds {value!r}, not a token count", row) from e
    if n < 1 or n != float(value):
        raise _fail(path, f"column '{col}' holds {value!r}: a token count is a whole number from 1", row)
    return n


def _seconds(value: Any, path: Path, row: int, col: str | None) -> float | None:
    if value is None:
        return None
    try:
        t = float(value)
    except (TypeError, ValueError) as e:
        raise _fail(path, f"column '{col}' holds {value!r}, not seconds", row) from e
    if t != t or t in (float("inf"), float("-inf")) or t < 0:
        raise _fail(path, f"column '{col}' holds {value!r}: timestamps are seconds from 0", row)
    return t


def _grouped(items: Iterable[tuple[int, str, Turn, Any]], cols: Columns, path: Path) -> list[Conversation]:
    """Rows that share a conversation id, ordered by turn (or file order); timestamps become think time."""
    groups: dict[str, list[tuple[Any, int, Turn]]] = defaultdict(list)
    for n, key, turn, order in items:
        groups[key].append((order if order is not None else n, n, turn))
    out: list[Conversation] = []
    for key, rows in groups.items():
        try:
            rows.sort(key=lambda r: (float(r[0]), r[1]))
        except (TypeError, ValueError) as e:
            raise _fail(path, f"column '{cols.turn}' of conversation {key!r} is not a number") from e
        turns: list[Turn] = []
        last_t: float | None = None
        for _, _, turn in rows:
            t = turn.think_s  # the row's timestamp until here
            gap = None if t is None or last_t is None else max(0.0, t - last_t)
            last_t = t if t is not None else last_t
            turns.append(Turn(turn.text, turn.answer, turn.output_tokens, gap if turns else None))
        out.append(Conversation(key, tuple(turns)))
    return out


def read_dataset(
    path: Path, fmt: DatasetFormat = "auto", columns: Columns | None = None, split: str | None = None
) -> LoadedDataset:
    """Read a dataset file (or saved dataset folder) into conversations; one ConfigError on any problem."""
    if not path.exists():
        raise _fail(
            path,
            "no such dataset file or folder; download it first (infermeter never fetches "
            "datasets), e.g. the ShareGPT JSON, or Dataset.save_to_disk() of a hub dataset",
        )
    kind = _detect(path) if fmt == "auto" else fmt
    if path.is_dir() and kind != "hf":
        raise _fail(path, f"a folder is read as a Hugging Face dataset (format: hf), not as {kind}")
    if not path.is_dir() and kind == "hf":
        raise _fail(path, "format hf reads a folder (save_to_disk, or data files); this is a file")
    cols = columns or Columns()
    singles: list[Conversation] = []
    keyed: list[tuple[int, str, Turn, Any]] = []
    skipped: dict[str, int] = defaultdict(int)
    rows = 0
    try:
        for n, row in _rows(path, kind, split):
            rows += 1
            key, turn, turns, system = _one(row, cols, path, n)
            ident = (
                str(row[cols.id])
                if cols.id and row.get(cols.id) is not None
                else str(row.get("id", f"{path.stem}-{n:06d}"))
            )
            if turns:
                singles.append(Conversation(ident, tuple(turns), system))
            elif turn is None:
                skipped["empty"] += 1
            elif key is not None:
                keyed.append((n, key, turn, row.get(cols.turn) if cols.turn else None))
            else:
                singles.append(Conversation(ident, (turn,), system))
    except OSError as e:
        raise _fail(path, f"cannot read: {e.strerror or e}") from e
    conversations = singles + _grouped(keyed, cols, path)
    if not conversations:
        what = f"{rows} rows, none with a usable prompt" if rows else "no rows"
        raise _fail(path, f"the dataset has {what}")
    sha, size = _digest(path)
    return LoadedDataset(path, kind, conversations, sha, size, rows, dict(skipped))
