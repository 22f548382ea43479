"""The Ray workers' parts that need no cluster: clock offsets, the lines a node ships, the worker count."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from agent.cli.run import worker_count
from agent.core.rundir import RunDir
from agent.core.scenario import load_scenario, resolve_scenario
from agent.run.cluster import RayCluster, RayWorker, clock_offset, loopback
from agent.run.shapes.base import Share
from agent.run.workers import WorkerSpec


def test_the_clock_offset_comes_from_the_shortest_round_trip_and_is_good_to_half_of_it() -> None:
    rng = random.Random(3)
    true_perf, true_wall = 5_000_000_000, -250_000_000  # the node's clocks: 5 s ahead, 0.25 s behind
    samples, now = [], 1_000_000_000
    for _ in range(20):
        out, back = rng.randrange(50_000, 5_000_000), rng.randrange(50_000, 5_000_000)  # uneven legs
        read = now + out  # when the node read its clocks, in this clock
        samples.append((now, now + 10**18, read + true_perf, read + 10**18 + true_wall, read + back))
        now += out + back + 1_000
    offset = clock_offset(samples)
    shortest = min(s[4] - s[0] for s in samples)
    assert offset.rtt_ns == shortest
    assert abs(offset.perf_ns - true_perf) <= shortest / 2
    assert abs(offset.wall_ns - true_wall) <= shortest / 2
    assert set(offset.describe()) == {"clock_offset_ms", "wall_offset_ms", "clock_rtt_ms"}
    with pytest.raises(ValueError):
        clock_offset([])


def test_a_node_ships_whole_lines_only_and_its_end_with_every_line(tmp_path: Path) -> None:
    sc = load_scenario(resolve_scenario("chat"))
    worker = RayWorker(WorkerSpec(Share(1, 2), sc, "sim", {}, "r", tmp_path, 0, None))
    try:
        records = RunDir(worker.dir).worker_records(1)
        assert worker.poll(0.0) == ([], b"", b"")  # nothing written yet
        records.write_bytes(b'{"seq": 1}\n{"seq": 3')  # a line half written when the poll comes
        worker.send(("tick", ({"ok": 1, "degraded": 0}, 1, [])))
        messages, lines, chains = worker.poll(0.0)
        assert messages == [("tick", ({"ok": 1, "degraded": 0}, 1, []))]
        assert lines == b'{"seq": 1}\n' and chains == b""
        with records.open("ab") as fh:
            fh.write(b'}\n{"seq": 5}\n')
        worker.send(("exit", 0))
        messages, lines, _ = worker.poll(0.0)
        assert messages == [("exit", 0)] and lines == b'{"seq": 3}\n{"seq": 5}\n'
        assert worker.poll(0.0) == ([], b"", b"")
    finally:
        worker.close()
    assert not worker.dir.exists()


def test_a_stop_before_the_load_starts_is_kept_for_it(tmp_path: Path) -> None:
    import asyncio

    sc = load_scenario(resolve_scenario("chat"))
    worker = RayWorker(WorkerSpec(Share(0, 1), sc, "sim", {}, "r", tmp_path, 0, None))
    worker.stop()
    stopped = []

    async def listen() -> None:
        worker.listen(lambda _m: None, lambda: stopped.append(True))
        await asyncio.sleep(0)

    asyncio.run(listen())
    worker.close()
    assert stopped == [True]


def test_loopback_urls_are_told_apart() -> None:
    assert (
        loopback("http://127.0.0.1:8000/v1") and loopback("http://localhost:1") and loopback("http://[::1]:2")
    )
    assert not loopback("http://10.0.0.5:8000") and not loopback("http://vllm.internal:8000")


def test_workers_default_to_the_clusters_cpus() -> None:
    cluster = RayCluster("h:6379", "2.60.0", 3, 12)
    assert worker_count(None) == 1
    assert worker_count(None, cluster) == worker_count("auto", cluster) == 12
    assert worker_count(None, RayCluster("h:6379", "2.60.0", 40, 640)) == 64
    assert worker_count("3", cluster) == 3
