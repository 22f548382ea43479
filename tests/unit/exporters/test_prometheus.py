"""The exporter: records in, the right samples out, in a fresh registry per test."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.core.record import RequestRecord
from agent.energy.base import PowerSample
from exporters import names
from exporters.http import MetricsServer
from exporters.prometheus import RecordMetrics

LABELS = {"backend": "sim", "model": "m", "scenario": "chat"}


def record(**over: Any) -> RequestRecord:
    base: dict[str, Any] = {
        "run_id": "r",
        "scenario": "chat",
        "request_id": "chat-000001",
        "seq": 1,
        "backend": "sim",
        "model": "m",
        "endpoint": "chat",
        "status": "ok",
        "intended_offset_ms": 0.0,
        "sent_offset_ms": 0.0,
        "schedule_lag_ms": 0.0,
        "sent_unix_s": 0.0,
        "ttft_ms": 120.0,
        "itl_ms": [10.0, 20.0, 30.0],
        "tpot_ms": 20.0,
        "e2e_ms": 180.0,
        "chunks": 4,
        "prefill_ms": 100.0,
        "decode_ms": 60.0,
        "prompt_tokens": 50,
        "output_tokens": 4,
        "native_tok_s": 4 / 0.06,
        "wall_tok_s": 4 / 0.18,
        "overhead_pct": (0.18 / 0.06 - 1) * 100,
        "decode_fraction": 60 / 160,
    }
    return RequestRecord(**(base | over))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_ok_record_lands_in_every_histogram_and_counter_in_base_units() -> None:
    m = RecordMetrics()
    m.observe(record())
    get = m.registry.get_sample_value
    assert get("infermeter_ttft_seconds_count", LABELS) == 1
    assert get("infermeter_ttft_seconds_sum", LABELS) == pytest.approx(0.12)
    assert get("infermeter_ttft_seconds_bucket", LABELS | {"le": "0.1159"}) == 0  # 120 ms: the next bucket
    assert get("infermeter_ttft_seconds_bucket", LABELS | {"le": "0.1274"}) == 1
    assert get("infermeter_itl_seconds_count", LABELS) == 3  # every gap, pooled
    assert get("infermeter_itl_seconds_sum", LABELS) == pytest.approx(0.06)
    assert get("infermeter_e2e_seconds_sum", LABELS) == pytest.approx(0.18)
    assert get("infermeter_native_prefill_seconds_sum", LABELS) == pytest.approx(0.1)
    assert get("infermeter_native_decode_seconds_sum", LABELS) == pytest.approx(0.06)
    assert get("infermeter_requests_total", LABELS | {"status": "ok", "reason": "none"}) == 1
    assert get("infermeter_prompt_tokens_total", LABELS) == 50
    assert get("infermeter_output_tokens_total", LABELS) == 4


def test_degraded_records_count_by_reason_and_stay_out_of_latency() -> None:
    m = RecordMetrics()
    m.observe(record(status="degraded", reason="timeout_total", cold_start=True))
    get = m.registry.get_sample_value
    assert get("infermeter_requests_total", LABELS | {"status": "degraded", "reason": "timeout_total"}) == 1
    assert get("infermeter_cold_starts_total", LABELS) == 1
    assert get("infermeter_ttft_seconds_count", LABELS) is None
    assert get("infermeter_last_success_timestamp_seconds", LABELS) is None


def test_warmup_feeds_only_the_warmup_ratio() -> None:
    m = RecordMetrics()
    m.observe(record(is_warmup=True, stage="warmup", e2e_ms=900.0))
    m.observe(record(e2e_ms=300.0))
    get = m.registry.get_sample_value
    assert get("infermeter_requests_total", LABELS | {"status": "ok", "reason": "none"}) == 1
    assert get("infermeter_e2e_seconds_count", LABELS) == 1
    assert get("infermeter_warmup_ratio", LABELS) == pytest.approx(3.0)


def test_window_gauges_follow_the_recent_records_and_vanish_when_stale() -> None:
    clock = Clock()
    m = RecordMetrics(window_s=60, clock=clock)
    m.observe(record())
    m.observe(
        record(output_tokens=8, decode_ms=40.0, decode_fraction=0.5, wall_tok_s=40.0, overhead_pct=50.0)
    )
    m.refresh()
    get = m.registry.get_sample_value
    assert get("infermeter_native_tokens_per_second", LABELS) == pytest.approx(12 / 0.1)
    assert get("infermeter_wall_tokens_per_second", LABELS) == pytest.approx((4 / 0.18 + 40) / 2)
    assert get("infermeter_decode_fraction", LABELS) == pytest.approx((60 / 160 + 0.5) / 2)
    assert get("infermeter_http_overhead_ratio", LABELS) == pytest.approx((2.0 + 0.5) / 2)
    assert get("infermeter_window_requests", LABELS) == 2
    assert get("infermeter_last_success_timestamp_seconds", LABELS) == 1000.0
    clock.now += 61
    m.refresh()
    assert get("infermeter_window_requests", LABELS) == 0
    assert get("infermeter_native_tokens_per_second", LABELS) is None  # no stale figure
    assert get("infermeter_ttft_seconds_count", LABELS) == 2  # histograms are cumulative


def test_the_window_is_bounded_in_count() -> None:
    m = RecordMetrics(window_cap=5)
    for _ in range(20):
        m.observe(record())
    m.refresh()
    assert m.registry.get_sample_value("infermeter_window_requests", LABELS) == 5


def test_every_catalogued_metric_is_exposed_with_its_declared_type_and_labels() -> None:
    m = RecordMetrics(version="9.9")
    m.observe(record(energy_j=2.5, energy_quality="good"))
    m.observe(record(is_warmup=True, stage="warmup"))
    m.set_backend_up("sim", "m", "chat", up=True)
    m.track_in_flight("sim", "m", "chat", lambda: 3.0)
    m.track_gpus(lambda: [PowerSample(0, 0, 150.0, None, 50.0, 900.0, 1000.0)])
    families = {f.name: f for f in text_string_to_metric_families(m.render().decode())}
    for spec in names.CATALOGUE:
        info = spec.kind == "info"  # the text format shows an Info as a gauge named <name>_info
        family = families[spec.exposed()[0] if info else spec.name]
        assert family.type == ("gauge" if info else spec.kind), spec.name
        for sample in family.samples:
            assert sample.name in spec.exposed()
            assert set(sample.labels) - {"le"} == set(spec.labels), sample
    assert m.registry.get_sample_value("infermeter_in_flight_requests", LABELS) == 3.0
    assert m.registry.get_sample_value("infermeter_build_info", {"version": "9.9"}) == 1


def test_metric_names_are_prefixed_in_base_units_and_buckets_sorted() -> None:
    for spec in names.CATALOGUE:
        assert spec.name.startswith(names.PREFIX)
        assert not spec.name.endswith(("_ms", "_total"))
        assert "prompt" not in spec.labels and "request_id" not in spec.labels
        if spec.buckets:
            assert list(spec.buckets) == sorted(spec.buckets)
            assert spec.buckets[0] <= 0.001 and spec.buckets[-1] >= 2.5
    assert names.LATENCY_BUCKETS[-1] >= 300  # minutes-long generations do not vanish into +Inf
    assert names.by_name("infermeter_ttft_seconds_bucket") is names.TTFT
    with pytest.raises(KeyError, match="no infermeter metric"):
        names.by_name("infermeter_nope")


async def test_the_http_face_serves_metrics_health_readiness_and_status() -> None:
    ready = {"now": False}
    m = RecordMetrics()
    m.observe(record())
    server = MetricsServer(m, ready=lambda: ready["now"], status=lambda: {"targets": {"a": "ok"}})
    url = await server.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{url}/metrics") as r:
                assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
                assert "infermeter_ttft_seconds_bucket" in await r.text()
            async with s.get(f"{url}/healthz") as r:
                assert r.status == 200
            async with s.get(f"{url}/readyz") as r:
                assert r.status == 503
            ready["now"] = True
            async with s.get(f"{url}/readyz") as r:
                assert r.status == 200
            async with s.get(f"{url}/status") as r:
                assert await r.json() == {"targets": {"a": "ok"}}
    finally:
        await server.close()
        await server.close()


async def test_a_taken_port_is_a_clear_error() -> None:
    first = MetricsServer(RecordMetrics())
    await first.start("127.0.0.1", 0)
    try:
        with pytest.raises(OSError, match=r"cannot serve metrics on 127\.0\.0\.1"):
            await MetricsServer(RecordMetrics()).start("127.0.0.1", first.port)
    finally:
        await first.close()


def test_energy_counts_only_windows_the_samples_could_see() -> None:
    m = RecordMetrics()
    m.observe(record(energy_j=2.0, energy_quality="good"))
    m.observe(record(energy_j=1.0, energy_quality="counter"))
    m.observe(record(energy_j=None, energy_quality="no_data"))
    m.observe(record(energy_j=None, energy_quality="no_data"))
    m.track_gpus(lambda: [PowerSample(0, 1, 300.0, None, 25.0, 950.0, 1000.0)])
    m.refresh()
    get = m.registry.get_sample_value
    assert get("infermeter_energy_joules_total", LABELS) == pytest.approx(3.0)
    assert get("infermeter_energy_no_data_ratio", LABELS) == pytest.approx(0.5)
    assert get("infermeter_gpu_power_watts", {"gpu": "1"}) == 300.0
    assert get("infermeter_gpu_utilization_ratio", {"gpu": "1"}) == pytest.approx(0.25)
    assert get("infermeter_gpu_memory_used_ratio", {"gpu": "1"}) == pytest.approx(0.95)


def test_gpu_energy_counts_macro_windows_between_scrapes_and_skips_blind_ones() -> None:
    m = RecordMetrics()
    clock = {"now": 2_000_000_000}
    windows: list[tuple[int, int]] = []

    def energy(start_ns: int, end_ns: int) -> float | None:
        windows.append((start_ns, end_ns))
        return None if len(windows) == 2 else 130.0 * (end_ns - start_ns) / 1e9

    m.track_energy(1_000_000_000, energy, lambda: clock["now"])
    m.render()
    clock["now"] = 3_000_000_000
    m.render()  # the samples could not see this second: not counted
    clock["now"] = 5_000_000_000
    m.render()
    m.render()  # no new sample: no window
    assert windows == [
        (1_000_000_000, 2_000_000_000),
        (2_000_000_000, 3_000_000_000),
        (3_000_000_000, 5_000_000_000),
    ]
    assert m.registry.get_sample_value("infermeter_gpu_energy_over_baseline_joules_total") == pytest.approx(
        390.0
    )


def test_schedule_lag_is_observed_for_open_loop_requests_only() -> None:
    m = RecordMetrics()
    m.observe(record(schedule_lag_ms=3.0))  # closed loop: no schedule to lag behind
    m.observe(record(schedule_lag_ms=3.0, target_rate=20.0))
    m.observe(record(schedule_lag_ms=40.0, target_rate=20.0, status="degraded", reason="timeout_total"))
    get = m.registry.get_sample_value
    assert get("infermeter_schedule_lag_seconds_count", LABELS) == 2
    assert get("infermeter_schedule_lag_seconds_sum", LABELS) == pytest.approx(0.043)


def test_goodput_counts_steady_requests_meeting_every_objective() -> None:
    m = RecordMetrics()
    m.declare("sim", "m", "chat", slo={"ttft_ms": 100.0, "tpot_ms": None, "e2e_ms": None, "percentile": 95.0})
    m.observe(record(ttft_ms=50.0))
    m.observe(record(ttft_ms=150.0))
    m.observe(record(ttft_ms=10.0, is_warmup=True))  # warmup: neither met nor missed
    value = m.registry.get_sample_value
    assert value("infermeter_slo_met_requests_total", LABELS) == 1.0
    plain = RecordMetrics()
    plain.declare("sim", "m", "chat", slo={"percentile": 95.0})  # no objective: no goodput series at all
    plain.observe(record(ttft_ms=50.0))
    assert plain.registry.get_sample_value("infermeter_slo_met_requests_total", LABELS) is None


def test_compile_evidence_becomes_gauges_only_when_there_was_a_warm_pass() -> None:
    m = RecordMetrics()
    m.set_compile("sim", "m", "chat", {"mode": None})
    assert m.registry.get_sample_value("infermeter_compile_seconds", {**LABELS, "phase": "warm"}) is None
    warm = {"ms": 87_204.7, "compile_s": 78.0, "frames_compiled": 5, "graphs": 3, "graph_breaks": 0}
    m.set_compile("sim", "m", "chat", {"warm": warm, "compiles_measured": 0, "graph_breaks": 1})
    value = m.registry.get_sample_value
    assert value("infermeter_compile_seconds", {**LABELS, "phase": "warm"}) == pytest.approx(87.2047)
    assert value("infermeter_compile_seconds", {**LABELS, "phase": "compiler"}) == 78.0
    assert value("infermeter_compiled_frames", {**LABELS, "when": "warm"}) == 5
    assert value("infermeter_compiled_frames", {**LABELS, "when": "measured"}) == 0
    assert value("infermeter_compiled_frames", {**LABELS, "when": "graph_breaks"}) == 1
