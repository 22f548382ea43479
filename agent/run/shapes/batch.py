"""Batches: N prompts sent together, as concurrent requests or as one batched call of the backend."""

from __future__ import annotations

import asyncio
import time

from agent.core.record import Stage
from agent.run.shapes.base import BatchOf, Driver, Plan, register
from agent.run.shapes.closed import clients

__all__ = ["batches"]


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
async def batches(driver: Driver, plan: Plan, origin_ns: int) -> None:
    """``concurrency`` clients, each sending one batch after another."""

    async def unit(stage: Stage) -> bool:
        return await _batch(driver, stage)

    await clients(plan, driver.scenario.concurrency, 0.0, unit)
