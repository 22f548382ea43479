"""Open loop: requests sent at their intended times; workers added only when none is free.

The schedule is the scenario's arrival process (constant, Poisson, gamma) or, for ``trace``, a recorded
trace's own clock. Latency is measured from the intended send time, so a client falling behind shows up
in the numbers instead of hiding in them.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator

from agent.core.arrivals import ramped, schedule
from agent.core.record import GenerationRequest, Stage
from agent.core.scenario import MAX_IN_FLIGHT, Load
from agent.run.shapes.base import Driver, Plan, Shape, register, until

__all__ = ["Open", "Send", "Trace", "arrivals", "dispatch", "mine"]


#: What an arrival starts: one request (the default), or a whole unit such as a conversation.
Send = Callable[[GenerationRequest, Stage, int], Awaitable[object]]


async def dispatch(
    driver: Driver, plan: Plan, origin_ns: int, offsets: Iterable[float], send: Send | None = None
) -> None:
    """Send each request at ``origin_ns`` + its offset, up to the in-flight cap.

    ``send`` starts what an arrival stands for (a conversation's first turn and the turns after it).
    """
    cap = driver.scenario.load.max_concurrency or MAX_IN_FLIGHT
    queue: asyncio.Queue[tuple[GenerationRequest, Stage, int] | None] = asyncio.Queue()
    idle = 0
    workers = 0

    async def worker() -> None:
        nonlocal idle
        while True:
            idle += 1
            item = await queue.get()
            idle -= 1
            if item is None:
                return
            if plan.deadline_ns is not None and time.perf_counter_ns() >= plan.deadline_ns:
                driver.not_sent()  # the run's time is up: never sent, so never recorded
                continue
            if send is None:
                await driver.one(item[0], item[1], intended_ns=item[2], before_ns=plan.deadline_ns)
            else:
                await send(*item)

    async with asyncio.TaskGroup() as tg:
        for offset in offsets:
            intended = origin_ns + int(offset * 1e9)
            # a dispatcher behind its schedule stops at the run's end all the same
            stage = plan.take(max(intended, time.perf_counter_ns()))
            if stage is None:
                break
            request = driver.next_request()
            if request is None:
                break
            await until(intended)
            if idle <= queue.qsize() and workers < cap:
                workers += 1
                tg.create_task(worker())
            queue.put_nowait((request, stage, intended))
        for _ in range(workers):
            queue.put_nowait(None)


@register("open")
class Open(Shape):
    """Arrivals from the scenario's process and rate."""

    async def run(self, driver: Driver, plan: Plan, origin_ns: int) -> None:
        """Each request at its due time, sent by a free worker (up to the in-flight cap)."""
        await dispatch(driver, plan, origin_ns, mine(driver, arrivals(driver.scenario.load)))


def mine(driver: Driver, offsets: Iterable[float]) -> Iterable[float]:
    """A worker's arrivals of the one schedule, by index (all of them in a single process)."""
    k, n = driver.share.index, driver.share.count
    return itertools.islice(offsets, k, None, n) if n > 1 else offsets


def arrivals(load: Load) -> Iterator[float]:
    """The open-loop schedule of a load: its process at its rate, ramped where it asks."""
    assert load.rate is not None  # the scenario validator requires it for open loop
    offsets = schedule(load.arrival, load.rate, burstiness=load.burstiness, seed=load.seed)  # type: ignore[arg-type]
    return ramped(offsets, load.rate, load.ramp, load.ramp_from) if load.ramp else offsets


@register("trace")
class Trace(Shape):
    """Arrivals at a recorded trace's times (already divided by the replay speed)."""

    async def run(self, driver: Driver, plan: Plan, origin_ns: int) -> None:
        """Each of the trace's requests at its own time."""
        assert driver.offsets is not None  # chosen only for a replay
        await dispatch(driver, plan, origin_ns, driver.offsets)
