"""The load engine against an in-memory backend: open loop, caps, think time, stages, chains, batches."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest

from agent.core.errors import ConfigError
from agent.core.record import ChainRecord
from agent.core.scenario import Scenario
from agent.core.workload import WorkPrompt
from agent.run.runner import ColdTracker, RunContext, Runner, expected_records, request_shapes
from tests.fakes import BatchingBackend, ListSink, ScriptedBackend


def scenario(**kw: Any) -> Scenario:
    base: dict[str, Any] = {"name": "t", "prompts": ["a", "b"], "requests": 6, "concurrency": 2, "warmup": 0}
    base.update(kw)
    return Scenario.model_validate(base)


async def run(
    sc: Scenario, backend: ScriptedBackend, **kw: Any
) -> tuple[Runner, ListSink, list[ChainRecord]]:
    sink = ListSink()
    chains: list[ChainRecord] = []
    cold = kw.pop("cold", None)
    context = RunContext("r", cold=cold, chain_sink=chains.append)
    runner = Runner(sc, backend, sink, context, **kw)
    await asyncio.wait_for(runner.run(), timeout=30)
    return runner, sink, chains


async def test_open_loop_sends_on_schedule_and_measures_from_intended_time() -> None:
    sc = scenario(requests=40, load={"arrival": "constant", "rate": 200.0})
    backend = ScriptedBackend(tokens=2, gap_s=0.001)
    _, sink, _ = await run(sc, backend)
    recs = sorted(sink.records, key=lambda r: r.intended_offset_ms)
    assert len(recs) == 40 and all(r.status == "ok" for r in recs)
    gaps = [b.intended_offset_ms - a.intended_offset_ms for a, b in itertools.pairwise(recs)]
    assert gaps == pytest.approx([5.0] * 39, abs=1e-3)  # intended times are the schedule, exactly
    assert all(r.schedule_lag_ms >= 0 for r in recs)  # never sent ahead of schedule
    assert all(r.target_rate == 200.0 for r in recs)
    assert all(r.e2e_ms is not None and r.e2e_ms >= r.schedule_lag_ms for r in recs)


async def test_open_loop_cap_limits_in_flight_and_the_lag_shows_in_latency() -> None:
    sc = scenario(requests=12, load={"arrival": "constant", "rate": 1000.0, "max_concurrency": 2})
    backend = ScriptedBackend(tokens=2, gap_s=0.01)
    _, sink, _ = await run(sc, backend)
    assert backend.max_in_flight == 2 and len(sink.records) == 12
    lagged = max(sink.records, key=lambda r: r.schedule_lag_ms)
    # held back by the cap: latency counts from the intended send, so it includes the wait
    assert lagged.schedule_lag_ms > 20
    assert lagged.ttft_ms is not None and lagged.ttft_ms > lagged.schedule_lag_ms


async def test_open_loop_adds_workers_only_as_needed() -> None:
    sc = scenario(requests=30, load={"arrival": "constant", "rate": 500.0})
    backend = ScriptedBackend(tokens=1, gap_s=0.0005)
    _, sink, _ = await run(sc, backend)
    assert len(sink.records) == 30
    # each request lasts well under a gap, so a handful of workers serve all thirty
    assert backend.max_in_flight <= 4


async def test_closed_loop_think_time_spaces_each_clients_requests() -> None:
    sc = scenario(requests=4, concurrency=1, load={"think_time": "30ms"})
    backend = ScriptedBackend(tokens=1, gap_s=0.0)
    await run(sc, backend)
    gaps = [(b - a) / 1e6 for a, b in itertools.pairwise(backend.sent_ns)]
    assert len(gaps) == 3 and min(gaps) >= 30


async def test_warmup_steady_cooldown_labels_and_counts() -> None:
    sc = scenario(requests=5, warmup=2, cooldown=3)
    _, sink, _ = await run(sc, ScriptedBackend())
    stages = [r.stage for r in sink.records]
    assert stages.count("warmup") == 2 and stages.count("steady") == 5 and stages.count("cooldown") == 3
    assert expected_records(sc) == 10


async def test_first_request_and_idle_gap_are_cold_starts() -> None:
    sc = scenario(requests=3, concurrency=1, load={"think_time": "60ms", "idle_gap": "50ms"})
    _, sink, _ = await run(sc, ScriptedBackend(tokens=1, gap_s=0.0))
    causes = [r.cold_cause for r in sorted(sink.records, key=lambda r: r.seq)]
    assert causes == ["first_request", "idle_gap", "idle_gap"]
    assert all(r.cold_start for r in sink.records)
    shared = ColdTracker()
    shared.begin(0), shared.end(1)
    _, sink, _ = await run(scenario(requests=2), ScriptedBackend(), cold=shared)
    assert not any(r.cold_start for r in sink.records)  # the backend was already warm


async def test_agent_chains_grow_the_conversation_and_write_chain_records() -> None:
    sc = scenario(
        requests=6,
        concurrency=2,
        agent={"steps": 3, "think_time": "5ms", "tool_results": ["T1", "T2"]},
        keep_output_every=0,
    )
    backend = ScriptedBackend(tokens=2)
    _, sink, chains = await run(sc, backend)
    assert len(sink.records) == 6 and len(chains) == 2
    assert all(c.status == "ok" and c.steps_done == 3 and c.think_ms >= 10 for c in chains)
    by_chain = {c.chain_id: [r for r in sink.records if r.chain_id == c.chain_id] for c in chains}
    assert all(sorted(r.step or 0 for r in recs) == [0, 1, 2] for recs in by_chain.values())
    third = next(r for r in backend.requests if r.request_id.endswith("-s2"))
    assert third.messages is not None
    roles = [m["role"] for m in third.messages]
    assert roles == ["user", "assistant", "user", "assistant", "user"]
    assert [m["content"] for m in third.messages[2::2]] == ["T1", "T2"]
    assert (
        third.messages[1]["content"] == "w0 w1 "
    )  # the previous answer, kept whatever keep_output_every says
    assert chains[0].output_tokens == 6 and chains[0].prompt_tokens == 15


async def test_a_failed_step_ends_its_chain_as_degraded() -> None:
    sc = scenario(requests=2, concurrency=1, agent={"steps": 2})
    _, sink, chains = await run(sc, ScriptedBackend(script=["ok", "fail"]))
    assert len(sink.records) == 2 and chains[0].status == "degraded"
    assert (chains[0].reason, chains[0].failed_step, chains[0].steps_done) == ("http_503", 1, 1)


async def test_concurrent_batches_share_an_intended_time_and_a_batch_id() -> None:
    sc = scenario(requests=8, concurrency=1, batch={"size": 4}, output_tokens=1)
    backend = ScriptedBackend(tokens=1, gap_s=0.005)
    _, sink, _ = await run(sc, backend)
    assert len(sink.records) == 8 and backend.max_in_flight == 4
    batches = {r.batch_id for r in sink.records}
    assert len(batches) == 2 and all(r.batch_size == 4 for r in sink.records)
    first = [r for r in sink.records if r.batch_id == sorted(batches)[0]]
    assert len({r.intended_offset_ms for r in first}) == 1


async def test_batched_mode_makes_one_call_and_one_record_per_batch() -> None:
    sc = scenario(requests=8, concurrency=1, batch={"size": 4, "mode": "batched"}, output_tokens=1)
    backend = BatchingBackend()
    _, sink, _ = await run(sc, backend)
    assert len(backend.batches) == 2 and all(len(b) == 4 for b in backend.batches)
    assert len(sink.records) == 2 and expected_records(sc) == 2
    rec = sink.records[0]
    assert (rec.endpoint, rec.prompt_tokens, rec.prefill_ms, rec.batch_size) == ("prefill_batch", 12, 2.0, 4)
    with pytest.raises(ConfigError, match="no batched call"):
        await run(sc, ScriptedBackend())


async def test_trace_requests_and_offsets_drive_an_open_loop() -> None:
    sc = scenario(requests=3)
    reqs = list(itertools.islice(sc.requests_iter(), 3))
    t0 = time.perf_counter()
    _, sink, _ = await run(sc, ScriptedBackend(tokens=1), requests=iter(reqs), offsets=[0.0, 0.05, 0.1])
    assert time.perf_counter() - t0 >= 0.1
    offsets = sorted(r.intended_offset_ms for r in sink.records)
    assert [b - a for a, b in itertools.pairwise(offsets)] == pytest.approx([50.0, 50.0], abs=1e-3)


def test_agent_and_batch_blocks_refuse_open_loop_and_each_other() -> None:
    with pytest.raises(ValueError, match="closed loop"):
        scenario(agent={"steps": 2}, load={"arrival": "poisson", "rate": 1})
    with pytest.raises(ValueError, match="not both"):
        scenario(agent={"steps": 2}, batch={"size": 2})
    with pytest.raises(ValueError, match="needs a rate"):
        scenario(load={"arrival": "gamma"})


def test_request_shapes_are_one_per_prompt_and_every_distinct_batch() -> None:
    """What a compiling backend warms before the clock: the prompts, or the batches their cycle makes."""
    singles, batches = request_shapes(scenario(prompts=["a", "bb", "ccc"]))
    assert [r.prompt or r.messages[-1]["content"] for r in singles] == ["a", "bb", "ccc"] and batches == []
    sc = scenario(prompts=["a", "bb", "ccc"], batch={"size": 2, "mode": "batched"})
    singles, batches = request_shapes(sc)
    # three prompts in twos repeat after six requests: three distinct batches
    assert singles == [] and batches == [["a", "bb"], ["ccc", "a"], ["bb", "ccc"]]


async def test_a_closed_loop_ramp_adds_clients_one_by_one_and_records_how_many() -> None:
    sc = scenario(requests=80, concurrency=4, load={"ramp": "0.4s"})
    backend = ScriptedBackend(tokens=2, gap_s=0.005)
    _, sink, _ = await run(sc, backend)
    recs = sorted(sink.records, key=lambda r: r.sent_offset_ms)
    levels = [r.clients for r in recs]
    assert levels[0] == 1 and levels[-1] == 4 and levels == sorted(levels)
    first_at = {n: next(r.sent_offset_ms for r in recs if r.clients == n) for n in (1, 2, 3, 4)}
    assert first_at[4] - first_at[1] >= 250  # the fourth client joined about 0.3 s after the first


async def test_an_open_loop_ramp_climbs_to_its_rate_and_each_record_carries_the_rate_when_due() -> None:
    sc = scenario(requests=60, load={"arrival": "constant", "rate": 100.0, "ramp": "0.5s", "ramp_from": 10})
    _, sink, _ = await run(sc, ScriptedBackend(tokens=2, gap_s=0.001))
    recs = sorted(sink.records, key=lambda r: r.intended_offset_ms)
    rates = [r.target_rate for r in recs]
    assert rates[0] is not None and rates[0] < 20 and rates[-1] == 100.0 and rates == sorted(rates)
    early = recs[1].intended_offset_ms - recs[0].intended_offset_ms
    late = recs[-1].intended_offset_ms - recs[-2].intended_offset_ms
    assert early > 4 * late


async def test_conversations_carry_each_turns_context_and_arrive_as_users_in_an_open_loop(
    tmp_path: Any,
) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text(
        '{"messages": [{"role": "user", "content": "one"}, {"role": "assistant", "content": "A1"},'
        ' {"role": "user", "content": "two"}, {"role": "assistant", "content": "A2"},'
        ' {"role": "user", "content": "three"}]}\n'
    )
    for load, answers in (({}, "server"), ({"arrival": "poisson", "rate": 50.0}, "dataset")):
        wl = {"kind": "dataset", "path": str(path), "turns": "all", "answers": answers, "think_time": "10ms"}
        sc = Scenario.model_validate(
            {"name": "c", "requests": 3, "concurrency": 2, "warmup": 0, "workload": wl, "load": load}
        )
        sc.load_data(tmp_path)
        first = sc.workload.data.conversations[0]  # type: ignore[union-attr]
        sc.use_prompts(
            [WorkPrompt("c0", first.turns[0].text, turns=first.turns[1:], answer=first.turns[0].answer)]
        )
        backend = ScriptedBackend(tokens=2, gap_s=0.001)
        _, sink, _ = await run(sc, backend)
        assert expected_records(sc) == 9 and len(sink.records) == 9
        by_conv: dict[str, list[Any]] = {}
        for r in sink.records:
            by_conv.setdefault(r.conversation_id, []).append(r)
        assert len(by_conv) == 3 and all(sorted(r.turn for r in v) == [0, 1, 2] for v in by_conv.values())
        last = [req for req in backend.requests if req.messages and req.messages[-1]["content"] == "three"]
        assert last and len(last[0].messages) == 5
        said = last[0].messages[1]["content"]
        assert (said == "A1") if answers == "dataset" else (said != "A1")
