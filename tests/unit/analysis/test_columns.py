"""Records read as columns: the same records and warnings as the record model, the same figures as numpy.

The streaming percentiles replace ``np.percentile`` where the values do not fit in memory, so they are held
equal to it bit for bit, over values with ties, negative values and both zeros, with the bins forced small
so every pass of the selection runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis import columns as columns_module
from analysis import quantiles, stats
from analysis.columns import RecordColumns, read_columns
from analysis.records import load_records
from analysis.stats import describe, describe_itl
from analysis.summary import summarize
from tests.unit.analysis.test_damaged_records import damaged, good_line

PCTS = (50.0, 95.0, 99.0, 0.0, 100.0, 37.3)


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(
        st.one_of(st.floats(-1e6, 1e6, allow_nan=False), st.sampled_from([0.0, -0.0, 10.0, 10.0000001])),
        min_size=1,
        max_size=300,
    ),
    gather=st.sampled_from([1, 3, 50, 1 << 20]),
    parts=st.integers(1, 9),
)
def test_streaming_percentiles_are_numpys(values: list[float], gather: int, parts: int) -> None:
    data = np.asarray(values, dtype=np.float64)
    old = quantiles.GATHER_LIMIT
    quantiles.GATHER_LIMIT = gather
    try:
        got = quantiles.stream_stats(lambda: iter(np.array_split(data, parts)), PCTS)
    finally:
        quantiles.GATHER_LIMIT = old
    assert got is not None
    assert got.percentiles == tuple(float(x) for x in np.percentile(data, PCTS))
    assert got.n == data.size and got.max == float(data.max())
    assert got.mean == pytest.approx(float(data.mean()), rel=1e-9, abs=1e-9)


def test_no_values_have_no_statistics() -> None:
    assert quantiles.stream_stats(lambda: iter([np.zeros(0)]), PCTS) is None


def chat_line(i: int, itl: list[float], **extra: object) -> bytes:
    row = json.loads(good_line(i))
    row.update(itl_ms=itl, stage="warmup" if i == 0 else "steady", is_warmup=i == 0, **extra)
    return json.dumps(row).encode() + b"\n"


def test_latencies_spilled_to_disk_describe_as_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(7)
    lines = [chat_line(i, np.round(rng.gamma(2, 5, 40), 3).tolist()) for i in range(300)]
    path = tmp_path / "records.jsonl"
    path.write_bytes(b"".join(lines))
    with read_columns(path) as held:
        expected = describe_itl(held.rows())
    monkeypatch.setattr(columns_module, "SPILL_VALUES", 100)
    monkeypatch.setattr(stats, "ITL_IN_MEMORY", 0)
    monkeypatch.setattr(quantiles, "GATHER_LIMIT", 10)
    with read_columns(path) as spilled:
        assert spilled.itl._file is not None
        streamed = describe_itl(spilled.rows())
    assert expected is not None and streamed is not None
    assert (streamed.p50, streamed.p95, streamed.p99, streamed.max, streamed.n) == (
        expected.p50,
        expected.p95,
        expected.p99,
        expected.max,
        expected.n,
    )
    assert streamed.mean == pytest.approx(expected.mean, rel=1e-12)
    flat = np.concatenate([json.loads(line)["itl_ms"] for line in lines])
    assert expected == describe(flat)


@settings(max_examples=60, deadline=None)
@given(
    gaps=st.lists(st.lists(st.floats(0, 1e4, allow_nan=False), max_size=9), min_size=1, max_size=40),
    chunk=st.sampled_from([1, 3, 7, 1 << 14]),
    pick=st.integers(0, 2**40),
)
def test_each_rows_median_gap_is_numpys(gaps: list[list[float]], chunk: int, pick: int) -> None:
    itl = columns_module.Itl()
    for start in range(0, len(gaps), 5):
        part = gaps[start : start + 5]
        flat = np.asarray([g for row in part for g in row], dtype=np.float64)
        itl.add(flat, np.asarray([len(r) for r in part]))
    itl.close_adding()
    rows = np.flatnonzero([(pick >> (i % 40)) & 1 for i in range(len(gaps))] or [0])
    old = columns_module._CHUNK_ROWS
    columns_module._CHUNK_ROWS = chunk
    try:
        got = itl.medians(rows)
    finally:
        columns_module._CHUNK_ROWS = old
    want = [float(np.median(gaps[r])) if gaps[r] else np.nan for r in rows]
    np.testing.assert_array_equal(got, np.asarray(want, dtype=np.float64))


def test_damaged_lines_are_the_record_models_warnings(tmp_path: Path) -> None:
    """A block pyarrow refuses is read line by line: the same lines kept, the same line numbers warned."""
    path = damaged(tmp_path / "records.jsonl")
    by_model = load_records(path)
    with read_columns(path) as cols:
        assert cols.n == len(by_model.records)
        assert cols.floats["intended_offset_ms"].tolist() == [r.intended_offset_ms for r in by_model.records]
        assert cols.warnings == by_model.warnings


def test_values_no_record_may_hold_send_the_block_to_the_record_model(tmp_path: Path) -> None:
    bad = json.loads(good_line(5))
    bad["status"] = "fine"  # a string pyarrow reads, but not a status
    missing = json.loads(good_line(6))
    del missing["run_id"]
    path = tmp_path / "records.jsonl"
    lines = [good_line(i) for i in range(5)] + [
        json.dumps(bad).encode() + b"\n",
        json.dumps(missing).encode(),
    ]
    path.write_bytes(b"".join(lines) + b"\n\n" + good_line(7))
    with read_columns(path) as cols:
        assert cols.floats["intended_offset_ms"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 7.0]
        assert [w.split(": ")[0].rsplit(":", 1)[1] for w in cols.warnings] == ["6", "7"]


def test_a_line_over_the_cap_is_skipped_unread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(columns_module, "MAX_LINE_BYTES", 4096)
    monkeypatch.setattr(columns_module, "BLOCK_BYTES", 1024)
    path = tmp_path / "records.jsonl"
    path.write_bytes(good_line(0) + b'{"output_text": "' + b"x" * 20_000 + b'"}\n' + good_line(2))
    with read_columns(path) as cols:
        assert cols.floats["intended_offset_ms"].tolist() == [0.0, 2.0]
        assert len(cols.warnings) == 1 and ":2: skipped a line over" in cols.warnings[0]


def test_records_in_memory_summarise_as_their_file(tmp_path: Path) -> None:
    lines = [chat_line(i, [1.0 + i, 2.0], prompt_tokens=10 + i, reason=None) for i in range(50)]
    path = tmp_path / "records.jsonl"
    path.write_bytes(b"".join(lines))
    with read_columns(path) as cols:
        from_file = summarize(cols)
    with RecordColumns.from_records(load_records(path).records) as cols:
        assert cols.n == 50
        assert summarize(cols) == from_file
    assert from_file.scenarios["chat"].requests.warmup == 1


def projected(records: list[Any]) -> list[tuple[object, ...]]:
    """What the quality scorers read of each ok steady record."""
    return [
        (r.request_id, r.prompt_id, r.output_text, r.top_logprobs)
        for r in records
        if r.status == "ok" and not r.is_warmup
    ]


def test_the_outputs_read_for_the_scorers_are_the_record_models(tmp_path: Path) -> None:
    lines = [
        chat_line(0, [1.0], output_text="warm", prompt_id="p0"),
        chat_line(1, [1.0, 2.0], output_text='Ünïcode \u2028 and "quotes"', prompt_id="p1"),
        chat_line(2, [], status="degraded", reason="timeout", output_text="cut", prompt_id="p2"),
        chat_line(3, [1.0], output_text=None, prompt_id="p3"),
        chat_line(4, [1.0], output_text="long " * 40_000, prompt_id=None),  # a line of 200 KB
        chat_line(
            5, [1.0], output_text="with logprobs", prompt_id="p5", top_logprobs=[{"a": -0.1, "b": -2.0}]
        ),
        chat_line(6, [1.0], output_text="other run", prompt_id="p6", run_id="r2"),
    ]
    path = tmp_path / "records.jsonl"
    path.write_bytes(b"".join(lines[:5]) + b"\n" + b"".join(lines[5:]))  # a blank line too
    with read_columns(path) as cols:
        assert cols.fast
    want = projected(load_records(path).records)
    assert projected(list(columns_module.outputs(path))) == want
    assert len(want) == 5
    by_run = projected([r for r in load_records(path).records if r.run_id == "r2"])
    assert (
        projected(list(columns_module.outputs(path, ("sim", "r2"))))
        == by_run
        == [("q6", "p6", "other run", None)]
    )


def test_a_run_read_slowly_gives_its_outputs_through_the_record_model(tmp_path: Path) -> None:
    from analysis.runs import load_run

    run = load_run(damaged(tmp_path / "records.jsonl"))
    assert not run.read_fast
    assert projected(list(run.iter_outputs())) == projected(list(run.iter_records()))
    recorded = load_run(Path(__file__).parents[2] / "data" / "recorded" / "a")
    assert recorded.read_fast
    assert projected(list(recorded.iter_outputs())) == projected(list(recorded.iter_records()))
    assert projected(list(recorded.iter_outputs()))
