from __future__ import annotations

import itertools

import pytest

from agent.core.record import (
    Chunk,
    Measurement,
    NativeTimings,
    RecordIdentity,
    RequestRecord,
    StreamEnd,
    Usage,
    check_invariants,
)

MS = 1_000_000
IDENT = RecordIdentity(
    run_id="r",
    scenario="chat",
    request_id="chat-000000",
    seq=0,
    backend="b",
    model="m",
    endpoint="chat",
    requested_output_tokens=4,
)


def measured(
    chunk_ms: list[float],
    end_ms: float,
    *,
    tokens: int | None = 4,
    prefill: float | None = 20.0,
    decode: float | None = 60.0,
    finish: str = "length",
) -> Measurement:
    m = Measurement(
        run_start_ns=0, run_start_unix=1000.0, intended_ns=10 * MS, sent_ns=12 * MS, keep_text=True
    )
    for i, t in enumerate(chunk_ms):
        m.observe(Chunk(int((10 + t) * MS), f"t{i}"))
    native = (
        NativeTimings("llamacpp_timings", prefill_ms=prefill, decode_ms=decode) if prefill or decode else None
    )
    usage = Usage(prompt_tokens=30, output_tokens=tokens) if tokens is not None else None
    m.observe(StreamEnd(int((10 + end_ms) * MS), usage=usage, native=native, finish_reason=finish))
    return m


def test_wall_and_native_figures_from_intended_send() -> None:
    r = measured([25.0, 45.0, 65.0, 85.0], 100.0).to_record(IDENT)
    assert r.status == "ok"
    assert r.ttft_ms == pytest.approx(25.0)
    assert r.e2e_ms == pytest.approx(100.0)
    assert r.itl_ms == pytest.approx([20.0, 20.0, 20.0])
    assert r.tpot_ms == pytest.approx((100.0 - 25.0) / 3)
    assert r.schedule_lag_ms == pytest.approx(2.0)
    assert r.intended_offset_ms == pytest.approx(10.0) and r.sent_offset_ms == pytest.approx(12.0)
    assert r.sent_unix_s == pytest.approx(1000.012)
    assert r.native_tok_s == pytest.approx(4 / 0.060)
    assert r.wall_tok_s == pytest.approx(4 / 0.100)
    assert r.overhead_pct == pytest.approx(((4 / 0.06) / (4 / 0.1) - 1) * 100)
    assert r.decode_fraction == pytest.approx(60 / 80)
    assert r.native_ttft_ms == pytest.approx(20.0)
    assert r.output_text == "t0t1t2t3"
    assert (r.output_tokens, r.token_source, r.chunks) == (4, "server", 4)


def test_early_stop_kept_ok_with_fixed_length_equivalent() -> None:
    r = measured([25.0, 45.0], 60.0, tokens=2, decode=30.0, finish="stop").to_record(IDENT)
    assert r.status == "ok" and r.early_stop
    assert r.decode_ms_fixed_len == pytest.approx(30.0 * 4 / 2)


def test_token_count_falls_back_to_chunks_and_says_so() -> None:
    r = measured([25.0, 45.0], 60.0, tokens=None).to_record(IDENT)
    assert (r.output_tokens, r.token_source) == (2, "chunks")


def test_native_longer_than_wall_breaks_the_invariant() -> None:
    r = measured([25.0, 45.0, 65.0, 85.0], 100.0, prefill=50.0, decode=60.0).to_record(IDENT)
    assert r.status == "degraded" and r.reason == "invariant"
    assert "prefill_ms + decode_ms" in (r.detail or "")


def test_failure_record_keeps_partial_timing() -> None:
    m = Measurement(0, 0.0, intended_ns=0, sent_ns=0)
    m.observe(Chunk(5 * MS, "x"))
    r = m.to_record(IDENT, failure=("connection_reset", "dropped"), now_ns=9 * MS)
    assert (r.status, r.reason, r.detail) == ("degraded", "connection_reset", "dropped")
    assert r.e2e_ms == pytest.approx(9.0) and r.ttft_ms == pytest.approx(5.0)


def test_reasoning_tokens_set_ttft_but_not_ttfo() -> None:
    m = Measurement(0, 0.0, intended_ns=0, sent_ns=0)
    m.observe(Chunk(3 * MS, "hmm", reasoning=True))
    m.observe(Chunk(8 * MS, "answer"))
    m.observe(StreamEnd(10 * MS, finish_reason="stop"))
    r = m.to_record(IDENT)
    assert r.ttft_ms == pytest.approx(3.0) and r.ttfo_ms == pytest.approx(8.0)


def test_record_round_trips_through_json() -> None:
    r = measured([25.0, 45.0, 65.0, 85.0], 100.0).to_record(IDENT)
    assert RequestRecord.model_validate_json(r.model_dump_json()) == r


def test_check_invariants_flags_ttft_after_e2e_and_negative_values() -> None:
    r = measured([25.0, 45.0, 65.0, 85.0], 100.0).to_record(IDENT)
    broken = r.model_copy(update={"ttft_ms": 150.0, "itl_ms": [-1.0], "load_ms": -2.0})
    problems = check_invariants(broken)
    assert any("ttft_ms" in p for p in problems)
    assert "negative inter-token gap" in problems and "load_ms is negative" in problems


def test_server_side_native_fields_reach_the_record() -> None:
    m = Measurement(run_start_ns=0, run_start_unix=0.0, intended_ns=0, sent_ns=0)
    m.observe(Chunk(5 * MS, "a"))
    native = NativeTimings(
        "ollama", prefill_ms=2.0, decode_ms=1.0, load_ms=900.0, total_ms=903.5, cold_start=True, compiled=None
    )
    m.observe(StreamEnd(1000 * MS, usage=Usage(None, 1), native=native))
    r = m.to_record(IDENT)
    assert r.status == "ok" and r.cold_start and r.native_total_ms == 903.5
    assert r.native_ttft_ms == 902.0 and r.prompt_tokens is None  # unknown stays unknown
    vllm = Measurement(run_start_ns=0, run_start_unix=0.0, intended_ns=0, sent_ns=0)
    vllm.observe(Chunk(5 * MS, "a"))
    vllm.observe(
        StreamEnd(
            9 * MS, native=NativeTimings("vllm_metrics", queue_ms=0.5, server_ttft_ms=4.0, compiled="x")
        )
    )
    r2 = vllm.to_record(IDENT)
    assert (r2.queue_ms, r2.native_ttft_ms, r2.compile_backend) == (0.5, 4.0, "x")
    assert r2.decode_fraction is None and r2.native_tok_s is None


def test_gaps_of_chunks_sharing_a_read_are_zero_and_match_their_stamps() -> None:
    m = Measurement(run_start_ns=0, run_start_unix=0.0, intended_ns=0, sent_ns=0)
    reads = [(5 * MS, 3), (7 * MS, 1), (7 * MS, 2), (12 * MS, 1), (20 * MS, 4)]
    for t_ns, count in reads:
        m.observe(Chunk(t_ns, "x" * count, count=count))
    m.observe(StreamEnd(21 * MS))
    r = m.to_record(IDENT)
    stamps = [t for t, count in reads for _ in range(count)]
    assert r.chunks == len(stamps) == 11
    assert r.itl_ms == [(b - a) / 1e6 for a, b in itertools.pairwise(stamps)]
    assert r.itl_ms == [0.0, 0.0, 2.0, 0.0, 0.0, 5.0, 8.0, 0.0, 0.0, 0.0]


def test_kept_output_text_stops_at_the_cap_and_says_so() -> None:
    m = Measurement(0, 0.0, 0, 0, keep_text=True, text_cap=10)
    for i, text in enumerate(["abcd", "efgh", "ijkl", "mnop"]):
        m.observe(Chunk(1_000_000 * (i + 1), text))
    m.observe(StreamEnd(5_000_000, usage=None, native=None, finish_reason="length"))
    rec = m.to_record(
        RecordIdentity(
            run_id="r",
            scenario="s",
            request_id="q",
            seq=0,
            backend="b",
            model="m",
            endpoint="chat",
            stage="steady",
        )
    )
    assert rec.output_text == "abcdefghij" and rec.output_truncated is True
    assert rec.chunks == 4  # the timing still counts every chunk


def test_a_one_token_answer_has_no_rate_and_no_overhead() -> None:
    # batch prefill: one token, a decode of a microsecond: no figure is a division by it
    r = measured([25.0], 26.0, tokens=1, prefill=20.0, decode=0.001).to_record(IDENT)
    assert r.status == "ok"
    assert (r.native_tok_s, r.wall_tok_s, r.overhead_pct, r.tpot_ms) == (None, None, None, None)
    assert r.decode_fraction == pytest.approx(0.001 / 20.001)


def test_a_decode_too_short_to_time_gives_no_native_rate() -> None:
    r = measured([25.0, 25.1], 26.0, tokens=2, prefill=20.0, decode=0.2).to_record(IDENT)
    assert r.native_tok_s is None and r.overhead_pct is None
    assert r.wall_tok_s == pytest.approx(2 / 0.026)


def test_derived_figures_that_cannot_be_are_invariant_breaches() -> None:
    good = measured([25.0, 45.0, 65.0, 85.0], 100.0).to_record(IDENT)
    assert check_invariants(good) == []
    bad = good.model_copy(update={"decode_fraction": 1.5, "overhead_pct": float("inf"), "tpot_ms": -1.0})
    broken = check_invariants(bad)
    assert any("decode_fraction" in b for b in broken) and any("overhead_pct" in b for b in broken)
    assert any("tpot_ms" in b for b in broken)
