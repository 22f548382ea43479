from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agent.core.record import GenerationRequest, StreamEvent
from agent.core.scenario import Scenario
from agent.run.runner import GC_YOUNG_THRESHOLD, RunContext, Runner
from tests.fakes import ListSink, ScriptedBackend


def scenario(**kw: Any) -> Scenario:
    base: dict[str, Any] = {"name": "t", "prompts": ["a", "b"], "requests": 6, "concurrency": 2, "warmup": 2}
    base.update(kw)
    return Scenario.model_validate(base)


async def run(
    sc: Scenario, backend: ScriptedBackend, stop: asyncio.Event | None = None
) -> tuple[Runner, ListSink]:
    sink = ListSink()
    runner = Runner(sc, backend, sink, RunContext("run-1"))
    await runner.run(stop)
    return runner, sink


async def test_warmup_then_steady_counts_and_labels() -> None:
    backend = ScriptedBackend()
    runner, sink = await run(scenario(), backend)
    stages = [r.stage for r in sink.records]
    assert stages.count("warmup") == 2 and stages.count("steady") == 6
    assert stages[:2] == ["warmup", "warmup"]
    assert all(r.is_warmup == (r.stage == "warmup") for r in sink.records)
    assert sorted(r.seq for r in sink.records) == list(range(8))
    assert runner.outcome.by_status == {"ok": 8} and not runner.outcome.interrupted
    assert backend.max_in_flight == 2


async def test_failures_become_degraded_records_and_the_run_goes_on() -> None:
    backend = ScriptedBackend(script=["ok", "ok", "fail", "ok", "fail"])
    runner, sink = await run(scenario(), backend)
    degraded = [r for r in sink.records if r.status == "degraded"]
    assert len(sink.records) == 8 and len(degraded) == 2
    assert {(r.reason, r.detail) for r in degraded} == {("http_503", "overloaded")}
    assert runner.outcome.by_reason == {"http_503": 2}


async def test_first_token_and_total_timeouts_are_told_apart() -> None:
    sc = scenario(requests=2, concurrency=1, warmup=0, timeout={"first_token_s": 0.05, "total_s": 0.2})
    _, sink = await run(sc, ScriptedBackend(script=["stall_first", "stall_mid"]))
    assert [r.reason for r in sink.records] == ["timeout_first_token", "timeout_total"]
    assert sink.records[1].ttft_ms is not None and sink.records[1].e2e_ms >= 200  # type: ignore[operator]


async def test_duration_bound_stops_issuing() -> None:
    sc = scenario(requests=None, duration=0.15, warmup=0, concurrency=2)
    _, sink = await run(sc, ScriptedBackend(gap_s=0.01))
    assert 2 <= len(sink.records) < 40
    assert max(r.sent_offset_ms for r in sink.records) < 150 + 50


async def test_stop_marks_in_flight_interrupted_and_keeps_completed() -> None:
    stop = asyncio.Event()
    backend = ScriptedBackend(script=["ok", "ok", "ok", "stall_mid", "stall_mid"])
    sc = scenario(requests=10, concurrency=2, warmup=0)

    async def later() -> None:
        await backend.when_called(5).wait()
        await asyncio.sleep(0.01)
        stop.set()

    task = asyncio.create_task(later())
    runner, sink = await run(sc, backend, stop)
    await task
    assert runner.outcome.interrupted
    reasons = [r.reason for r in sink.records]
    assert reasons.count(None) == 3 and reasons.count("interrupted") == 2


@pytest.mark.parametrize("every", [0, 1, 2])
async def test_output_text_kept_every_nth(every: int) -> None:
    _, sink = await run(
        scenario(keep_output_every=every, warmup=0, requests=4, concurrency=1), ScriptedBackend()
    )
    kept = [r.output_text is not None for r in sorted(sink.records, key=lambda r: r.seq)]
    assert kept == [every > 0 and i % every == 0 for i in range(4)]


class FlushCountingSink(ListSink):
    """A buffering sink: records what was written before each flush."""

    def __init__(self) -> None:
        super().__init__()
        self.flushed_at: list[int] = []

    def flush(self) -> None:
        self.flushed_at.append(len(self.records))


async def test_a_buffering_sink_is_flushed_after_each_batch_and_at_the_end() -> None:
    import gc

    sink = FlushCountingSink()
    runner = Runner(scenario(requests=40, concurrency=8, warmup=0), ScriptedBackend(), sink, RunContext("r"))
    await runner.run()
    assert len(sink.records) == 40
    assert sink.flushed_at and sink.flushed_at[-1] == 40  # nothing written stays unflushed
    assert sink.flushed_at == sorted(sink.flushed_at)
    assert not gc.get_freeze_count()  # the heap frozen for the run is handed back


class ThresholdSeeingBackend(ScriptedBackend):
    """Notes the garbage collector's thresholds while it streams."""

    def __init__(self) -> None:
        super().__init__()
        self.thresholds: set[tuple[int, int, int]] = set()

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        import gc

        self.thresholds.add(gc.get_threshold())
        async for event in super().stream(request):
            yield event


@pytest.mark.parametrize("freeze", [True, False])
async def test_the_young_gc_threshold_is_raised_for_the_load_only(freeze: bool) -> None:
    import gc

    before = gc.get_threshold()
    backend = ThresholdSeeingBackend()
    runner = Runner(
        scenario(requests=6, concurrency=2, warmup=0), backend, ListSink(), RunContext("r"), freeze_gc=freeze
    )
    await runner.run()
    during = (max(GC_YOUNG_THRESHOLD, before[0]), *before[1:]) if freeze else before
    assert backend.thresholds == {during}
    assert gc.get_threshold() == before
