"""Batches: N prompts sent together, as concurrent requests or as one batched call of the backend."""

from __future__ import annotations

import asyncio
import itertools
import math
import time

from agent.core.record import GenerationRequest, Stage
from agent.core.scenario import Scenario
from agent.run.shapes.base import (
    BatchOf,
    Driver,
    Plan,
    RequestShapes,
    Shape,
    batch_text,
    register,
)
from agent.run.shapes.closed import clients

__all__ = ["WARM_BATCHES", "Batches"]

#: at most this many batches are warmed per scenario (prompts cycle, so batches repeat sooner)
WARM_BATCHES = 64


async def _batch(driver: Driver, stage: Stage) -> bool:
    """One batch; False when the workload ran out (a short last batch is still sent)."""
    sc = driver.scenario
    assert sc.batch is not None
    reqs = [r for r in (driver.next_request() for _ in range(sc.batch.size)) if r is not None]
    if not reqs:
        return False
    batch = BatchOf(f"{sc.name}-batch-{driver.next_unit():05d}", len(reqs))
    intended = time.perf_counter_ns()
    if sc.batch.mode == "concurrent":
        await asyncio.gather(*(driver.one(r, stage, intended_ns=intended, batch=batch) for r in reqs))
    else:
        await driver.batched(reqs, stage, batch)
    return len(reqs) == sc.batch.size


@register("batch")
class Batches(Shape):
    """``concurrency`` clients, each sending one batch of N prompts after another."""

    unit = "batch"

    def size(self, sc: Scenario) -> int:
        """Batches of N prompts."""
        assert sc.batch is not None
        return sc.batch.size

    def records(self, sc: Scenario, units: int) -> int | None:
        """One record per prompt when the batch is N concurrent requests; one per batched call."""
        assert sc.batch is not None
        return units * sc.batch.size if sc.batch.mode == "concurrent" else units

    def in_flight(self, sc: Scenario) -> int:
        """N requests per client when a batch is N concurrent requests."""
        if sc.batch is not None and sc.batch.mode == "concurrent" and not sc.load.open_loop:
            return sc.concurrency * sc.batch.size
        return super().in_flight(sc)

    def request_shapes(self, sc: Scenario, requests: list[GenerationRequest] | None = None) -> RequestShapes:
        """A batched scenario sends only batches; its prompts cycle, so they repeat after lcm(prompts, N)."""
        requests, _ = super().request_shapes(sc, requests)
        if sc.batch is None or sc.batch.mode != "batched" or not requests:
            return requests, []
        size = sc.batch.size
        count = min(math.lcm(len(requests), size), WARM_BATCHES * size)
        prompts = [batch_text(r) for r in itertools.islice(itertools.cycle(requests), count)]
        return [], [prompts[i : i + size] for i in range(0, count, size)]

    async def run(self, driver: Driver, plan: Plan, origin_ns: int) -> None:
        """Each client sends its batches one after another."""

        async def unit(stage: Stage) -> bool:
            return await _batch(driver, stage)

        await clients(plan, driver.scenario.concurrency, 0.0, unit)
