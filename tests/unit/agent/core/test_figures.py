"""The figure catalogue: each figure is read from records, summaries and series that really have it."""

from __future__ import annotations

import pytest

from agent.core.figures import COMPARED, FIGURES, LATENCY_TABLE, RUN_FIGURES, exported, figure
from agent.core.record import RequestRecord
from analysis.analyze import metric_values
from analysis.columns import RecordColumns
from analysis.study import CELL_FIGURES, LOWER_IS_BETTER
from analysis.summary import summarize
from exporters import names


def _record(i: int) -> RequestRecord:
    return RequestRecord(
        run_id="r",
        request_id=f"q{i}",
        seq=i,
        endpoint="chat",
        schedule_lag_ms=0.0,
        scenario="chat",
        backend="sim",
        model="m",
        stage="steady",
        status="ok",
        sent_unix_s=1.0,
        intended_offset_ms=i * 10.0,
        sent_offset_ms=i * 10.0,
        ttft_ms=10.0 + i,
        e2e_ms=50.0 + i,
        tpot_ms=20.0,
        itl_ms=[5.0, 6.0],
        chunks=3,
        output_tokens=3,
        prompt_tokens=8,
        prefill_ms=4.0,
        decode_ms=20.0,
        token_source="server",
    )


def test_keys_are_unique_and_each_figure_is_found_by_its_key() -> None:
    keys = [f.key for f in FIGURES]
    assert len(keys) == len(set(keys))
    assert all(figure(k).key == k for k in keys)
    with pytest.raises(KeyError, match="no figure 'nope'; known: ttft_ms"):
        figure("nope")


def test_every_exported_figure_names_a_series_of_the_exporters_catalogue() -> None:
    for f in FIGURES:
        if f.exported is not None:
            assert names.by_name(names.PREFIX + f.exported).name == names.PREFIX + exported(f.key)
    assert names.TTFT.name == names.PREFIX + "ttft_seconds"
    with pytest.raises(KeyError, match="no exported series"):
        exported("itl_ms_median")


def test_every_request_figure_is_read_from_records_and_every_summary_path_exists() -> None:
    records = [_record(i) for i in range(4)]
    rows = RecordColumns.from_records(records).rows()
    for f in (f for f in FIGURES if f.per == "request"):  # a record field, or derived by the analyzer
        assert f.key in RequestRecord.model_fields or f.key == "itl_ms_median", f.key
        if f.key == "itl_ms":  # every gap: the columns' latency store
            assert rows.cols.itl.count(rows.index) == 2 * len(records)
        else:  # one value per request, read from the records' columns: the records' own values
            want = [5.5] * len(records) if f.key == "itl_ms_median" else [getattr(r, f.key) for r in records]
            assert metric_values(rows, f.key).tolist() == [v for v in want if v is not None], f.key
    summary = summarize(records).scenarios["chat"]
    for f in LATENCY_TABLE:
        group, _, key = (f.summary or "").partition(".")
        assert getattr(summary, group)[key] is not None, f.key


def test_the_analyzer_and_studies_judge_each_figure_by_its_declared_direction() -> None:
    assert [f.key for f in COMPARED][:4] == ["ttft_ms", "tpot_ms", "itl_ms_median", "e2e_ms"]
    assert CELL_FIGURES == RUN_FIGURES and {f.key for f in RUN_FIGURES} >= {"output_tok_s", "j_per_token"}
    for f in (*COMPARED, *RUN_FIGURES):
        assert LOWER_IS_BETTER[f.key] is f.lower_is_better
        assert f.direction == ("lower" if f.lower_is_better else "higher")
    assert figure("wall_tok_s").direction == "higher" and figure("itl_ms").title == "ITL"
