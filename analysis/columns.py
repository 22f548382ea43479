"""A run's records as columns: what the summary, the report and the analyzer read, at a flat cost per record.

``records.jsonl`` is parsed by pyarrow's JSON reader in blocks of lines, keeping only the fields the
figures need: numbers become float64 arrays (NaN where a record has none), names become integer codes
into a small table of labels, and the inter-token latencies go to one flat float64 store (spilled to a
temporary file past ``SPILL_VALUES``) read back in chunks. No Python object is made per record, so a
million records cost about 200 MB and the ITL percentiles stay exact (``analysis.quantiles``).

A block that pyarrow refuses, or whose values a record may not hold, is read again line by line through
``RequestRecord`` itself: every line it accepts is kept, every other line is a warning, as before.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import itertools
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
from pydantic import ValidationError

from agent.core.record import RequestRecord
from agent.core.rundir import RunDir
from analysis.records import MAX_LINE_BYTES

__all__ = [
    "FLOATS",
    "LABELS",
    "SPILL_VALUES",
    "Itl",
    "Output",
    "RecordColumns",
    "Rows",
    "as_rows",
    "outputs",
    "read_columns",
]

#: Numeric fields kept as floats (None is NaN): float64, or float32 for counts (exact below 2**24) and
#: read out as float64.
COUNTS = (
    "chunks",
    "prompt_tokens",
    "requested_prompt_tokens",
    "template_tokens",
    "cached_prompt_tokens",
    "output_tokens",
    "requested_output_tokens",
    "turn",
)
FLOATS = (
    "intended_offset_ms",
    "sent_offset_ms",
    "schedule_lag_ms",
    "target_rate",
    "ttft_ms",
    "tpot_ms",
    "e2e_ms",
    "prefill_ms",
    "decode_ms",
    "load_ms",
    "native_ttft_ms",
    "queue_ms",
    "native_tok_s",
    "wall_tok_s",
    "overhead_pct",
    "decode_fraction",
    "energy_j",
    *COUNTS,
    "streamed",
)
#: Flags a record always has (a missing one is False).
FLAGS = ("is_warmup", "cold_start", "early_stop")
#: Names kept as codes into a table of labels (None where a record has none).
LABELS = (
    "run_id",
    "scenario",
    "stage",
    "status",
    "reason",
    "backend",
    "model",
    "load_stage",
    "token_source",
    "prefix_group",
    "conversation_id",
    "energy_quality",
)
_INTS = set(COUNTS)
#: Fields read as another type and kept as float64 (a flag that may be missing: 1, 0 or NaN).
_FLOAT_TYPES = {**{n: pa.int64() for n in _INTS}, "streamed": pa.bool_()}
_REQUIRED = ("run_id", "scenario", "request_id", "seq", "backend", "model", "endpoint", "status")
_REQUIRED_NUMBERS = ("intended_offset_ms", "sent_offset_ms", "schedule_lag_ms", "sent_unix_s")
_ALLOWED: dict[str, set[str | None]] = {
    "status": {"ok", "degraded"},
    "stage": {"warmup", "steady", "cooldown", None},
}
_DEFAULTS = {"stage": "steady"}


def _schema() -> pa.Schema:
    fields = [pa.field(n, _FLOAT_TYPES.get(n, pa.float64())) for n in FLOATS]
    fields += [pa.field(n, pa.bool_()) for n in FLAGS]
    fields += [pa.field(n, pa.string()) for n in LABELS]
    fields += [  # checked for every record, not kept
        pa.field("request_id", pa.string()),
        pa.field("endpoint", pa.string()),
        pa.field("seq", pa.int64()),
        pa.field("sent_unix_s", pa.float64()),
    ]
    fields.append(pa.field("itl_ms", pa.list_(pa.float64())))
    return pa.schema(fields)


_SCHEMA = _schema()
_OPTIONS = pj.ParseOptions(explicit_schema=_SCHEMA, unexpected_field_behavior="ignore")

#: Inter-token latencies held in memory up to this many values (16 MB); more go to a temporary file.
SPILL_VALUES = 2 << 20
#: Lines parsed by pyarrow at once, where a file is read block by block.
BLOCK_BYTES = 8 << 20
#: pyarrow's threaded reader parses this much at a time (and reads ahead a few): its memory is tens of
#: times this, so small blocks, whose rows are taken into the columns ``APPEND_ROWS`` at a time.
STREAM_BLOCK_BYTES = 256 << 10
APPEND_ROWS = 1 << 10
#: The system allocator gives freed blocks back; pyarrow's default keeps them for reuse.
_POOL = pa.system_memory_pool()
_CHUNK_ROWS = 1 << 12
_INT16_MAX = 32767


class _Grow:
    """An array appended to in blocks, grown by doubling (large allocations, returned whole when freed).

    Until a value other than the fill arrives, only the count is kept: a field no record holds costs
    nothing, however many records there are.
    """

    def __init__(self, dtype: type, fill: object = np.nan) -> None:
        self.data: np.ndarray | None = None
        self.dtype = np.dtype(dtype)
        self.fill = fill
        self.size = 0

    def add(self, values: np.ndarray, empty: bool = False) -> None:
        """Append ``values``; ``empty`` says they are all the fill, so none need be stored yet."""
        end = self.size + values.size
        if self.data is None and empty:
            self.size = end
            return
        if self.data is None or end > self.data.size:
            capacity = max(end, 2 * (self.data.size if self.data is not None else 1 << 14))
            grown = np.empty(capacity, dtype=self.dtype)
            if self.data is None:
                grown[: self.size] = self.fill  # type: ignore[call-overload]
            else:
                grown[: self.size] = self.data[: self.size]
            self.data = grown
        self.data[self.size : end] = values
        self.size = end

    def widen(self, dtype: type) -> None:
        """Hold values of a wider type from now on (the ones held are kept)."""
        self.dtype = np.dtype(dtype)
        if self.data is not None:
            self.data = self.data.astype(self.dtype)

    def take(self) -> np.ndarray | None:
        """The values in an array of their own size (None: every value is the fill); the buffer is emptied."""
        out = self.data
        self.data = None
        if out is not None and out.size != self.size:
            out.resize(self.size, refcheck=False)  # shrunk in place (no copy, no second array at once)
        return out


class Itl:
    """Every record's inter-token latencies, flat, with each record's start; read back in chunks."""

    def __init__(self) -> None:
        self._parts: list[np.ndarray] = []
        self._held = 0
        self._file: BinaryIO | None = None
        self._lengths = _Grow(np.int64, fill=0)
        self.offsets = np.zeros(1, dtype=np.int64)

    def add(self, values: np.ndarray, lengths: np.ndarray) -> None:
        """A block's latencies, flat, and how many each of its records holds."""
        self._lengths.add(lengths)
        if self._file is None and self._held + values.size > SPILL_VALUES:
            self._file = tempfile.TemporaryFile(prefix="infermeter-itl-")  # noqa: SIM115 (closed by close())
            for part in self._parts:
                self._file.write(part.tobytes())
            self._parts = []
        if self._file is not None:
            self._file.write(np.ascontiguousarray(values, dtype=np.float64).tobytes())
        else:
            self._parts.append(np.asarray(values, dtype=np.float64))
        self._held += values.size

    def close_adding(self) -> None:
        """Every block added: each record's start is known from here on."""
        lengths = self._lengths.take()
        if lengths is None:
            lengths = np.zeros(0, dtype=np.int64)
        self.offsets = np.zeros(lengths.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=self.offsets[1:])
        if self._file is None:
            self._parts = [np.concatenate(self._parts) if self._parts else np.zeros(0)]

    @property
    def lengths(self) -> np.ndarray:
        """How many latencies each record holds."""
        return np.diff(self.offsets)

    def _span(self, lo: int, hi: int) -> np.ndarray:
        if self._file is None:
            return self._parts[0][lo:hi]
        self._file.seek(lo * 8)
        return np.frombuffer(self._file.read((hi - lo) * 8), dtype=np.float64)

    def chunks(self, rows: np.ndarray) -> Iterator[np.ndarray]:
        """The latencies of ``rows`` (sorted record indices), in record order, some records at a time."""
        take = np.zeros(self.offsets.size - 1, dtype=bool)
        take[rows] = True
        lengths = self.lengths
        for r0 in range(0, take.size, _CHUNK_ROWS):
            r1 = min(r0 + _CHUNK_ROWS, take.size)
            part = take[r0:r1]
            if not part.any():
                continue
            values = self._span(int(self.offsets[r0]), int(self.offsets[r1]))
            yield values if part.all() else values[np.repeat(part, lengths[r0:r1])]

    def medians(self, rows: np.ndarray) -> np.ndarray:
        """Each row's median gap (NaN for a row with none), as ``np.median`` gives it, some rows at a time.

        The rows of a block that hold the same number of gaps are taken as one 2-D array, so a block's
        medians cost a few ``np.median(axis=1)`` calls, not one per row.
        """
        out = np.full(rows.size, np.nan)
        lengths = self.lengths
        total = self.offsets.size - 1
        for r0 in range(0, total, _CHUNK_ROWS):
            r1 = min(r0 + _CHUNK_ROWS, total)
            i0, i1 = np.searchsorted(rows, [r0, r1])
            if i0 == i1:
                continue
            block = rows[i0:i1]
            values = self._span(int(self.offsets[r0]), int(self.offsets[r1]))
            starts, lens = self.offsets[block] - self.offsets[r0], lengths[block]
            for n in np.unique(lens[lens > 0]):
                at = np.flatnonzero(lens == n)
                out[i0 + at] = np.median(values[starts[at][:, None] + np.arange(n)], axis=1)
        return out

    def count(self, rows: np.ndarray) -> int:
        """How many latencies ``rows`` hold."""
        return int(self.lengths[rows].sum())

    def close(self) -> None:
        """Free the latencies, and remove the temporary file if they needed one."""
        self._parts, self.offsets = [], np.zeros(1, dtype=np.int64)
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()


@dataclass
class _Labels:
    """A column of names as codes into ``values`` (code -1: none)."""

    values: list[object] = field(default_factory=list)
    index: dict[object, int] = field(default_factory=dict)
    parts: _Grow = field(default_factory=lambda: _Grow(np.int16, fill=-1))
    codes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))

    def add(self, column: pa.ChunkedArray) -> None:
        if column.null_count == len(column) and self.parts.data is None:  # none held yet: a count
            self.parts.size += len(column)
            return
        enc = pc.dictionary_encode(column.combine_chunks())  # one block's values, one dictionary
        local = np.asarray([self._code(v) for v in enc.dictionary.to_pylist()] + [-1], dtype=np.int32)
        if self.parts.dtype == np.int16 and len(self.values) >= _INT16_MAX:
            self.parts.widen(np.int32)
        codes = local[enc.indices.fill_null(local.size - 1).to_numpy(zero_copy_only=False)]
        self.parts.add(codes, empty=column.null_count == len(column))

    def _code(self, value: object) -> int:
        code = self.index.get(value)
        if code is None:
            code = self.index[value] = len(self.values)
            self.values.append(value)
        return code

    def close_adding(self) -> None:
        """Join the blocks' codes in the narrowest integer type that holds them."""
        dtype = np.int8 if len(self.values) < 127 else self.parts.dtype
        size = self.parts.size
        codes = self.parts.take()
        self.codes = np.full(size, -1, dtype=dtype) if codes is None else codes.astype(dtype)
        self.codes.flags.writeable = False


class RecordColumns:
    """The records of a run, column by column, in file order."""

    def __init__(self) -> None:
        self.n = 0
        #: True when pyarrow read every file whole: every line is one the record model accepts
        self.fast = False
        #: the run's start on the unix clock: the first record's send time less its offset
        self.origin_unix_s: float | None = None
        self.warnings: list[str] = []
        self._floats = {k: _Grow(np.float32 if k in _INTS else np.float64) for k in FLOATS}
        self._floats |= {k: _Grow(bool, fill=False) for k in FLAGS}
        self.floats: dict[str, np.ndarray | None] = {}
        self.labels: dict[str, _Labels] = {k: _Labels() for k in LABELS}
        self.itl = Itl()

    def _append(self, table: pa.Table) -> None:
        n = table.num_rows
        if not self.n and n:
            self.origin_unix_s = float(table.column("sent_unix_s")[0].as_py()) - (
                float(table.column("sent_offset_ms")[0].as_py()) / 1000
            )
        self.n += n
        for name in FLOATS:
            col = table.column(name)
            grow = self._floats[name]
            if col.null_count == n and grow.data is None:  # a field no record has held yet: a count
                grow.size += n
                continue
            grow.add(col.cast(pa.float64()).to_numpy())
        for name in FLAGS:
            col = table.column(name).fill_null(False)
            self._floats[name].add(col.to_numpy(), empty=not pc.any(col).as_py())
        for name in LABELS:
            col = table.column(name)
            if name in _DEFAULTS:
                col = col.fill_null(_DEFAULTS[name])
            self.labels[name].add(col)
        itl = table.column("itl_ms")
        lengths = pc.fill_null(pc.list_value_length(itl), 0).to_numpy()
        values = pc.list_flatten(itl).to_numpy(zero_copy_only=False)
        self.itl.add(values, lengths)

    def _close_adding(self) -> None:
        for name in list(self._floats):
            grow = self._floats.pop(name)
            size, column = grow.size, grow.take()
            if column is None and grow.dtype == bool:
                column = np.zeros(size, dtype=bool)
            if column is not None:
                column.flags.writeable = False  # rows read it without a copy
            self.floats[name] = column  # None: no record holds the field (it reads as NaN)
        for labels in self.labels.values():
            labels.close_adding()
        self.itl.close_adding()

    def rows(self) -> Rows:
        """Every record, as a row view."""
        return Rows(self, np.arange(self.n, dtype=np.int32 if self.n < 2**31 else np.int64))

    def close(self) -> None:
        """Free what the columns hold, in memory and on disk (the latencies' temporary file)."""
        self.itl.close()
        self.floats, self.labels = {}, {}

    def __enter__(self) -> RecordColumns:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @classmethod
    def from_records(cls, records: Iterable[RequestRecord]) -> RecordColumns:
        """Columns of records already in memory (they are read the way a file's lines are)."""
        out = cls()
        lines = [r.model_dump_json().encode() + b"\n" for r in records]
        for start in range(0, len(lines), 4096):
            out._add_block(b"".join(lines[start : start + 4096]), "<records>", start + 1)
        out._close_adding()
        return out

    def _add_block(self, body: bytes, source: str, first: int) -> None:
        table = _parse(body)
        if table is None:
            table = _validated(body, source, first, self.warnings)
        if table is not None and table.num_rows:
            self._append(table)


def _valid(table: pa.Table) -> bool:
    """Whether every row holds what a record must (pyarrow checks the types; these are the rest)."""
    for name in (*_REQUIRED, *_REQUIRED_NUMBERS):
        if table.column(name).null_count:
            return False
    for name, allowed in _ALLOWED.items():
        if not set(pc.unique(table.column(name)).to_pylist()) <= set(allowed):
            return False
    return True


def _parse(body: bytes) -> pa.Table | None:
    """The block's rows, or None where pyarrow refuses a line or a value no record may hold."""
    try:
        table = _read_body(body, _OPTIONS)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    return table if _valid(table) else None


def _read_body(body: bytes, options: pj.ParseOptions) -> pa.Table:
    """A block of whole lines through pyarrow's reader (a line longer than a parse block in one block)."""
    for block in (1 << 20, len(body) + 1):
        try:
            return pj.read_json(io.BytesIO(body), parse_options=options, read_options=_read(block))
        except pa.ArrowInvalid as e:
            if "straddling" not in str(e) or block == len(body) + 1:
                raise
    raise AssertionError("unreachable")  # pragma: no cover - the last block size holds every line


def _read(block: int) -> pj.ReadOptions:
    return pj.ReadOptions(block_size=block, use_threads=True)


def _validated(body: bytes, source: str, first: int, warnings: list[str]) -> pa.Table | None:
    """A refused block read line by line through the record model: good lines kept, bad ones warned."""
    good = []
    for i, line in enumerate(body.split(b"\n")):
        if not line.strip():
            continue
        try:
            good.append(RequestRecord.model_validate_json(line).model_dump_json().encode() + b"\n")
        except ValidationError as e:
            warnings.append(f"{source}:{first + i}: skipped unreadable record ({e.error_count()} errors)")
    return _parse(b"".join(good)) if good else None


def _skip_line(fh: BinaryIO) -> None:
    """Read past the rest of a line too long to keep (to just after its newline, or to the end)."""
    while data := fh.read(BLOCK_BYTES):
        end = data.find(b"\n")
        if end >= 0:
            fh.seek(end + 1 - len(data), io.SEEK_CUR)
            return


def _bodies(path: Path, warnings: list[str]) -> Iterator[tuple[int, bytes]]:
    """Whole lines about ``BLOCK_BYTES`` at a time, with the number of each block's first line.

    A line is gathered in one growing buffer; past ``MAX_LINE_BYTES`` with no end in sight it is skipped
    unread, so no line costs more than the cap and a block.
    """
    lineno, rest = 1, bytearray()
    with path.open("rb") as fh:
        while data := fh.read(BLOCK_BYTES):
            cut = data.rfind(b"\n")
            if cut < 0:
                rest += data
                if len(rest) > MAX_LINE_BYTES:
                    warnings.append(f"{path}:{lineno}: skipped a line over {MAX_LINE_BYTES >> 20} MiB")
                    _skip_line(fh)
                    rest, lineno = bytearray(), lineno + 1
                continue
            body = bytes(rest) + data[: cut + 1] if rest else data[: cut + 1]
            rest = bytearray(data[cut + 1 :])
            yield lineno, body
            lineno += body.count(b"\n")
    if rest.strip():
        yield lineno, bytes(rest) + b"\n"


def _read_fast(path: Path, out: RecordColumns) -> bool:
    """The whole file through pyarrow's threaded reader; False where any block is refused.

    The reader parses small blocks (its memory grows with the block), and their rows are taken into the
    columns ``APPEND_ROWS`` at a time (each take has a fixed cost).
    """
    try:
        reader = pj.open_json(
            path, read_options=_read(STREAM_BLOCK_BYTES), parse_options=_OPTIONS, memory_pool=_POOL
        )
        batches: list[pa.RecordBatch] = []
        rows = 0
        for batch in itertools.chain(reader, [None]):
            if batch is not None:
                batches.append(batch)
                rows += batch.num_rows
            if batches and (batch is None or rows >= APPEND_ROWS):
                table = pa.Table.from_batches(batches)
                batches, rows = [], 0
                if not _valid(table):
                    return False
                out._append(table)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
    return True


def read_columns(paths: Path | Iterable[Path]) -> RecordColumns:
    """The columns of one records file (or a run directory holding one), or of several, in order.

    Well-formed files are read by pyarrow's threaded reader; where any line is refused, the files are
    read again block by block, and the refused blocks line by line, so every good line is kept and every
    bad one is a warning.
    """
    files = [paths] if isinstance(paths, Path) else list(paths)
    files = [f for p in files for f in (RunDir(p).record_files() if p.is_dir() else [p])]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"{f} does not exist; pass a run directory written by `infermeter run`")
    out = RecordColumns()
    out.fast = all(_read_fast(f, out) for f in files)
    if not out.fast:
        out.close()
        out = RecordColumns()
        for f in files:
            for first, body in _bodies(f, out.warnings):
                out._add_block(body, str(f), first)
    out._close_adding()
    _trim()
    return out


def _trim() -> None:
    """Give the reader's freed blocks back to the system (glibc keeps them otherwise); elsewhere a no-op."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class Rows:
    """A subset of a run's records, in file order: the figures' view of the columns."""

    def __init__(self, cols: RecordColumns, index: np.ndarray) -> None:
        self.cols = cols
        self.index = index
        #: every record, in order: a column is read as it is held, with no copy
        self.whole = index.size == cols.n

    def __len__(self) -> int:
        return int(self.index.size)

    def f(self, name: str) -> np.ndarray:
        """A numeric column of these rows (NaN where a record has none; flags as booleans); read-only."""
        column = self.cols.floats[name]
        if column is None:
            return np.full(self.index.size, np.nan)
        out: np.ndarray = column if self.whole else column[self.index]
        return out.astype(np.float64) if out.dtype == np.float32 else out

    def codes(self, name: str) -> np.ndarray:
        """A label column of these rows, as codes (-1: none); read-only."""
        codes = self.cols.labels[name].codes
        out: np.ndarray = codes if self.whole else codes[self.index]
        return out

    def label_of(self, name: str, code: int) -> object:
        """The label a code of column ``name`` stands for."""
        return None if code < 0 else self.cols.labels[name].values[code]

    def is_(self, name: str, value: object) -> np.ndarray:
        """Which rows have ``value`` in the label column ``name``."""
        if value is None:
            none: np.ndarray = self.codes(name) < 0
            return none
        code = self.cols.labels[name].index.get(value)
        if code is None:
            return np.zeros(len(self), dtype=bool)
        out: np.ndarray = self.codes(name) == code
        return out

    def where(self, mask: np.ndarray) -> Rows:
        """The rows ``mask`` selects (these rows themselves where it selects all)."""
        return self if mask.all() else Rows(self.cols, self.index[mask])

    def groups(self, name: str) -> dict[object, Rows]:
        """Rows split by a label column, in first-seen order."""
        codes = self.codes(name)
        uniq, first = np.unique(codes, return_index=True)
        return {self.label_of(name, int(c)): self.where(codes == c) for c in uniq[np.argsort(first)]}

    def values(self, name: str) -> list[object]:
        """The labels of these rows (one Python value per row: for small subsets only)."""
        table = self.cols.labels[name].values
        return [None if c < 0 else table[c] for c in self.codes(name).tolist()]


def as_rows(records: Rows | RecordColumns | Iterable[RequestRecord]) -> Rows:
    """Rows of columns, of rows, or of records in memory (read into columns of their own)."""
    if isinstance(records, Rows):
        return records
    if isinstance(records, RecordColumns):
        return records.rows()
    return RecordColumns.from_records(records).rows()


# --- the outputs the quality scorers read -------------------------------------------------------------


class Output(NamedTuple):
    """What the quality scorers read of one ok steady record: its names, its text and its logprobs."""

    status: str
    is_warmup: bool
    request_id: str
    prompt_id: str | None
    output_text: str | None
    top_logprobs: list[dict[str, float]] | None = None


_TEXT_SCHEMA = pa.schema(
    [pa.field("is_warmup", pa.bool_())]
    + [
        pa.field(n, pa.string())
        for n in ("status", "request_id", "prompt_id", "output_text", "backend", "run_id")
    ]
)
_TEXT_OPTIONS = pj.ParseOptions(explicit_schema=_TEXT_SCHEMA, unexpected_field_behavior="ignore")
#: a block holding any record with top-k logprobs (a JSON object per position, no fixed fields) is read
#: through the record model instead
_LOGPROBS = re.compile(rb'"top_logprobs"\s*:\s*\[')


def outputs(path: Path, key: tuple[str, str] | None = None) -> Iterator[Output]:
    """The ok steady records of a file ``read_columns`` read fast, in file order, for their text.

    Only the few fields the scorers need are parsed into Python objects (pyarrow reads the rest past);
    ``key`` keeps only one (backend, run id). The records are the ones ``RequestRecord`` reads.
    """
    for _, body in _bodies(path, []):
        if _LOGPROBS.search(body):
            yield from _outputs_of_records(body, key)
            continue
        table = _read_body(body, _TEXT_OPTIONS)
        keep = pc.and_(
            pc.equal(table.column("status"), "ok"), pc.invert(table.column("is_warmup").fill_null(False))
        )
        if key is not None:
            keep = pc.and_(
                keep,
                pc.and_(pc.equal(table.column("backend"), key[0]), pc.equal(table.column("run_id"), key[1])),
            )
        kept = table.filter(keep)
        columns = [kept.column(n).to_pylist() for n in ("request_id", "prompt_id", "output_text")]
        for request_id, prompt_id, text in zip(*columns, strict=True):
            yield Output("ok", False, request_id, prompt_id, text)


def _outputs_of_records(body: bytes, key: tuple[str, str] | None) -> Iterator[Output]:
    for line in body.split(b"\n"):
        if not line.strip():
            continue
        try:
            r = RequestRecord.model_validate_json(line)
        except ValidationError:
            continue
        if r.status == "ok" and not r.is_warmup and (key is None or (r.backend, r.run_id) == key):
            yield Output(r.status, r.is_warmup, r.request_id, r.prompt_id, r.output_text, r.top_logprobs)
