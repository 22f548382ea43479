"""How ``run --workers N`` splits one run: every unit to exactly one worker, the run's files read whole."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent.core.errors import ConfigError
from agent.core.rundir import RunDir
from agent.core.scenario import load_scenario, resolve_scenario
from agent.run.shapes.base import Share
from agent.run.workers import check_splittable, split


@pytest.mark.parametrize("n", [1, 2, 3, 7])
@pytest.mark.parametrize("units", [0, 1, 5, 64, 1001])
def test_shares_cover_every_unit_once(n: int, units: int) -> None:
    taken = sorted(i for k in range(n) for i in range(k, units, n))
    assert taken == list(range(units))
    assert sum(Share(k, n).of(units) for k in range(n)) == units


def test_a_closed_loop_is_split_by_clients_requests_warmup_and_cooldown() -> None:
    sc = load_scenario(resolve_scenario("chat")).with_overrides(
        requests=101, concurrency=10, warmup=3, cooldown=2
    )
    parts = [split(sc, Share(k, 3)) for k in range(3)]
    assert [p.concurrency for p in parts] == [4, 3, 3]
    assert [p.requests for p in parts] == [34, 34, 33]
    assert sum(p.warmup for p in parts) == 3 and sum(p.cooldown for p in parts) == 2
    assert all(p.prompt_list() == sc.prompt_list() for p in parts)


def test_an_open_loop_keeps_its_rate_and_splits_its_cap() -> None:
    sc = load_scenario(resolve_scenario("chat")).with_overrides(
        requests=10, load={"arrival": "poisson", "rate": 50.0, "max_concurrency": 9}
    )
    parts = [split(sc, Share(k, 2)) for k in range(2)]
    assert [p.load.rate for p in parts] == [50.0, 50.0]  # each takes every other arrival of one schedule
    assert [p.load.max_concurrency for p in parts] == [5, 5]
    assert [p.requests for p in parts] == [5, 5]


@pytest.mark.parametrize(
    ("name", "overrides", "units", "size"),
    [
        ("agent_steps", {"requests": 30, "concurrency": 4}, 8, 4),  # 30 step records: 8 chains of 4 steps
        ("batch_prefill", {"requests": 40, "concurrency": 3}, 5, 8),  # 5 batches of 8 prompts
        ("conversations", {"requests": 7, "concurrency": 3}, 7, 1),  # 7 conversations
    ],
)
def test_units_that_stay_whole_are_split_whole(
    name: str, overrides: dict[str, int], units: int, size: int
) -> None:
    sc = load_scenario(resolve_scenario(name)).with_overrides(**overrides)
    parts = [split(sc, Share(k, 3)) for k in range(3)]
    # each worker's requests are whole units of its own: together every unit of the run, none twice
    assert all(p.requests is not None and p.requests % size == 0 for p in parts)
    assert [(p.requests or 0) // size for p in parts] == [Share(k, 3).of(units) for k in range(3)]
    assert sum(p.concurrency for p in parts) == overrides["concurrency"]


def test_fewer_clients_than_workers_is_refused_in_one_line() -> None:
    chains = load_scenario(resolve_scenario("agent_steps")).with_overrides(concurrency=2)
    with pytest.raises(ConfigError, match="--concurrency 3 or more"):
        check_splittable(chains, 3)


def test_a_run_directory_lists_each_workers_records_in_worker_order(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    for name in [
        "records.jsonl",
        "records.w10.jsonl",
        "records.w2.jsonl",
        "records.w0.jsonl",
        "records.wx.jsonl",
    ]:
        (tmp_path / name).write_text("")
    assert [p.name for p in run.record_files()] == [
        "records.jsonl",
        "records.w0.jsonl",
        "records.w2.jsonl",
        "records.w10.jsonl",
    ]
    assert run.worker_records(3) == tmp_path / "records.w3.jsonl"


def test_a_tick_bigger_than_the_pipe_reaches_the_parent_whole(tmp_path: Path) -> None:
    """The worker's event loop makes its pipe non-blocking; a tick of many records is still sent whole."""
    import multiprocessing
    import threading
    import time

    import uvloop

    from agent.core.record import RequestRecord
    from agent.run.workers import WorkerSpec, _Link, _Pipe
    from tests.unit.analysis.test_damaged_records import good_line

    sc = load_scenario(resolve_scenario("chat"))
    spec = WorkerSpec(Share(0, 2), sc, "sim", {}, "r", tmp_path, 0, None, forward=True)
    parent, child = multiprocessing.Pipe()
    record = RequestRecord.model_validate_json(good_line(1)).model_copy(update={"itl_ms": [1.5] * 256})
    got: list[object] = []

    def read_late() -> None:
        time.sleep(0.3)  # the pipe fills long before the parent reads
        got.append(parent.recv())

    reader = threading.Thread(target=read_late)
    reader.start()

    async def tick() -> None:
        link = _Link(spec, _Pipe(child), asyncio.Event())
        link.finished = [
            record.model_copy(update={"seq": i}) for i in range(2_000)
        ]  # MBs; a pipe holds 64 KB
        link.tick()

    uvloop.run(tick())
    reader.join(10)
    kind, (_counts, in_flight, records) = got[0]  # type: ignore[misc]
    assert kind == "tick" and in_flight == 0 and len(records) == 2_000
    assert [r.seq for r in records] == list(range(2_000)) and records[0].itl_ms == record.itl_ms
