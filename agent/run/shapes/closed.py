"""Closed loop: ``concurrency`` clients, each issuing its next unit when the last one ends (plus think time).

Also the frame the chain and batch shapes run in, and how every warmup runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from agent.core.record import Stage
from agent.run.shapes.base import Driver, Plan, Shape, register

__all__ = ["Closed", "clients"]

#: One unit of work at a stage; False when the workload is used up.
Unit = Callable[[Stage], Awaitable[bool]]


async def clients(plan: Plan, concurrency: int, think_s: float, unit: Unit, ramp_s: float = 0.0) -> None:
    """Run ``concurrency`` clients (fewer when the plan is smaller) until the plan or the work runs out.

    With ``ramp_s``, client k joins ``k · ramp_s / concurrency`` seconds in: the load rises linearly.
    """
    start = time.perf_counter()

    async def client(k: int) -> None:
        if ramp_s:
            await asyncio.sleep(max(0.0, start + k * ramp_s / concurrency - time.perf_counter()))
        while (stage := plan.take(time.perf_counter_ns())) is not None:
            if await unit(stage) is False:
                return
            if think_s:
                await asyncio.sleep(think_s)

    bound = plan.bound()
    count = min(concurrency, bound) if bound is not None else concurrency
    async with asyncio.TaskGroup() as tg:
        for k in range(count):
            tg.create_task(client(k))


def single(driver: Driver) -> Unit:
    """The unit of a plain closed loop: one request."""

    async def one(stage: Stage) -> bool:
        request = driver.next_request()
        if request is None:
            return False
        await driver.one(request, stage)
        return True

    return one


@register("closed")
class Closed(Shape):
    """The scenario's clients, each with its think time between requests."""

    async def run(self, driver: Driver, plan: Plan, origin_ns: int) -> None:
        """``concurrency`` clients, one request after another."""
        sc = driver.scenario
        await clients(plan, sc.concurrency, sc.load.think_time or 0.0, single(driver), sc.load.ramp or 0.0)
