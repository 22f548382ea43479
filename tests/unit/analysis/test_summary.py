from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.core.record import RequestRecord
from agent.core.scenario import Targets
from analysis.records import load_records
from analysis.stats import describe
from analysis.summary import summarize
from exporters.jsonl import JsonlWriter


def rec(
    seq: int, *, e2e: float, ttft: float, stage: str = "steady", status: str = "ok", **kw: Any
) -> RequestRecord:
    base: dict[str, Any] = {
        "run_id": "r",
        "scenario": "chat",
        "stage": stage,
        "is_warmup": stage == "warmup",
        "request_id": f"q{seq}",
        "seq": seq,
        "backend": "b",
        "model": "m",
        "endpoint": "chat",
        "status": status,
        "intended_offset_ms": seq * 100.0,
        "sent_offset_ms": seq * 100.0,
        "schedule_lag_ms": 0.0,
        "sent_unix_s": 0.0,
        "e2e_ms": e2e,
        "ttft_ms": ttft,
        "itl_ms": [10.0, 12.0],
        "output_tokens": 3,
        "prefill_ms": ttft / 2,
        "decode_ms": e2e / 2,
        "token_source": "server",
    }
    base.update(kw)
    return RequestRecord(**base)


def test_describe_matches_numpy() -> None:
    values = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0]
    d = describe([*values, None])
    assert d is not None and d.n == 8
    assert d.p50 == pytest.approx(np.percentile(values, 50))
    assert d.p95 == pytest.approx(np.percentile(values, 95))
    assert d.p99 == pytest.approx(np.percentile(values, 99))
    assert (d.max, d.mean) == (9.0, pytest.approx(np.mean(values)))
    assert describe([]) is None and describe([None]) is None


def test_steady_ok_only_with_success_rate_and_warmup_ratio() -> None:
    records = [
        rec(0, e2e=2000.0, ttft=900.0, stage="warmup"),
        rec(1, e2e=100.0, ttft=20.0),
        rec(2, e2e=300.0, ttft=40.0),
        rec(3, e2e=200.0, ttft=30.0),
        rec(4, e2e=5.0, ttft=1.0, status="degraded", reason="http_503"),
    ]
    targets = {"chat": Targets.of({"prompt_tokens": 256, "output_tokens": 3})}
    s = summarize(records, targets).dump()["scenarios"]["chat"]
    assert s["requests"] == {
        "steady": 4,
        "ok": 3,
        "degraded": 1,
        "success_rate": 0.75,
        "degraded_by_reason": {"http_503": 1},
        "warmup": 1,
        "interrupted": 0,
        "cold_start": 0,
    }
    assert s["latency_ms"]["e2e"]["p50"] == 200.0 and s["latency_ms"]["e2e"]["max"] == 300.0
    assert s["latency_ms"]["itl"]["n"] == 6
    assert s["warmup"]["ratio"] == pytest.approx(2000.0 / 200.0) and not s["warmup"]["needs_warm_pool"]
    tp = s["throughput"]
    assert tp["output_tokens"] == 9
    assert tp["window_s"] == pytest.approx((300.0 + 200.0 - 100.0) / 1000)
    assert tp["native_tok_s_aggregate"] == pytest.approx(9 / ((50 + 150 + 100) / 1000))
    assert s["tokens"]["prompt_target"] == 256


def test_cold_starts_are_kept_out_of_steady_latency_and_counted_apart() -> None:
    records = [rec(1, e2e=100.0, ttft=10.0), rec(2, e2e=120.0, ttft=12.0), rec(3, e2e=3000.0, ttft=2900.0)]
    records[2] = records[2].model_copy(update={"cold_start": True, "load_ms": 2800.0})
    s = summarize(records).dump()["scenarios"]["chat"]
    assert s["requests"]["ok"] == 3 and s["requests"]["cold_start"] == 1
    assert s["latency_ms"]["e2e"]["max"] == 120.0
    assert s["cold_start"]["n"] == 1 and s["cold_start"]["load_ms"]["p50"] == 2800.0


def test_server_count_differing_from_chunks_is_counted() -> None:
    records = [rec(1, e2e=100.0, ttft=10.0), rec(2, e2e=100.0, ttft=10.0)]
    records = [r.model_copy(update={"chunks": 3}) for r in records]
    records[1] = records[1].model_copy(update={"output_tokens": 7})
    assert summarize(records).dump()["scenarios"]["chat"]["tokens"]["server_vs_chunk_mismatch"] == 1


def test_warm_pool_flag_above_ten() -> None:
    records = [rec(0, e2e=1100.0, ttft=1.0, stage="warmup"), rec(1, e2e=100.0, ttft=1.0)]
    assert summarize(records).dump()["scenarios"]["chat"]["warmup"]["needs_warm_pool"]


def test_writer_and_loader_round_trip_and_bad_lines_warn(tmp_path: Path) -> None:
    records = [rec(i, e2e=100.0 + i, ttft=10.0) for i in range(3)]
    with JsonlWriter(tmp_path / "records.jsonl") as w:
        for r in records:
            w.write(r)
    with (tmp_path / "records.jsonl").open("a") as fh:
        fh.write("{not json\n\n")
    loaded = load_records(tmp_path)
    assert loaded.records == records
    assert len(loaded.warnings) == 1 and "records.jsonl:4" in loaded.warnings[0]


def test_missing_run_dir_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="infermeter run"):
        load_records(tmp_path / "nope")


def test_goodput_counts_failures_as_misses_and_latency_keeps_its_n() -> None:
    records = [
        rec(1, e2e=100.0, ttft=20.0),
        rec(2, e2e=100.0, ttft=80.0),
        rec(3, e2e=900.0, ttft=20.0),
        rec(4, e2e=100.0, ttft=20.0, status="degraded", reason="http_503"),
    ]
    slo = {"ttft_ms": 50.0, "e2e_ms": 500.0, "tpot_ms": None}
    s = summarize(records, {"chat": Targets.of({"slo": slo})}).dump()["scenarios"]["chat"]
    good = s["goodput"]
    assert (good["met"], good["of"], good["share"]) == (1, 4, 0.25)
    assert good["slo"] == {"ttft_ms": 50.0, "e2e_ms": 500.0}
    assert s["latency_ms"]["ttft"]["n"] == 3 and s["requests"]["degraded"] == 1
    assert summarize(records).dump()["scenarios"]["chat"]["goodput"] is None


def test_open_loop_fidelity_reports_requested_scheduled_and_achieved_rate() -> None:
    records = [
        rec(i, e2e=50.0, ttft=10.0, target_rate=10.0, schedule_lag_ms=lag, sent_offset_ms=i * 100.0 + lag)
        for i, lag in enumerate([0.1, 0.2, 0.3, 25.0, 0.1])
    ]
    load = {"arrival": "constant", "rate": 10.0, "lag_limit_ms": 10.0}
    s = summarize(records, {"chat": Targets.of({"load": load})}).dump()["scenarios"]["chat"]["load"]
    assert s["rate_requested"] == 10.0 and s["rate_scheduled"] == pytest.approx(10.0)
    assert s["rate_achieved"] == pytest.approx(4 / 0.4)
    assert s["schedule_lag_ms"]["max"] == 25.0 and s["trustworthy"] is False
    closed = summarize([rec(1, e2e=1.0, ttft=1.0)], {"chat": Targets.of({"load": {"arrival": "closed"}})})
    assert closed.scenarios["chat"].load is None
