"""Agent chains: K steps each, every prompt the conversation so far plus a tool result."""

from __future__ import annotations

import asyncio
import dataclasses
import time

from agent.core.record import RequestRecord, Stage
from agent.core.scenario import Scenario
from agent.run.shapes.base import ChainFailure, ChainStep, Driver, Plan, Shape, register
from agent.run.shapes.closed import clients

__all__ = ["Chains"]


async def _chain(driver: Driver, stage: Stage) -> bool:
    """One chain; False when the workload is used up."""
    sc = driver.scenario
    assert sc.agent is not None
    base = driver.next_request()
    if base is None:
        return False
    chain_id = f"{sc.name}-chain-{driver.next_unit():05d}"
    messages = list(base.messages or [])
    prompt = base.prompt
    t0 = time.perf_counter_ns()
    think_ns = 0
    done = 0
    records: list[RequestRecord] = []
    failed: RequestRecord | None = None
    try:
        for step in range(sc.agent.steps):
            req = dataclasses.replace(
                base, request_id=f"{chain_id}-s{step}", messages=list(messages) or None, prompt=prompt
            )
            rec = await driver.one(req, stage, chain=ChainStep(chain_id, step), keep_text=True)
            assert rec is not None  # chain steps are never deferred: the next prompt needs the text
            records.append(rec)
            if rec.status != "ok":
                failed = rec
                break
            done += 1
            tool = sc.agent.tool_results[step % len(sc.agent.tool_results)]
            if messages:
                messages += [
                    {"role": "assistant", "content": rec.output_text or ""},
                    {"role": "user", "content": tool},
                ]
            else:
                prompt = f"{prompt or ''}{rec.output_text or ''}\n\n{tool}\n\n"
            if step + 1 < sc.agent.steps and sc.agent.think_time:
                t_think = time.perf_counter_ns()
                await asyncio.sleep(sc.agent.think_time)
                think_ns += time.perf_counter_ns() - t_think
    except asyncio.CancelledError:
        driver.chain_done(chain_id, stage, t0, think_ns, records, ChainFailure("interrupted", done))
        raise
    fail = ChainFailure(failed.reason or "degraded", done) if failed is not None else None
    driver.chain_done(chain_id, stage, t0, think_ns, records, fail)
    return True


@register("chain")
class Chains(Shape):
    """``concurrency`` agents, each running one chain of K steps after another.

    A chain grows its context from its answers, so only its first step is known before the run.
    """

    unit = "chain"

    def size(self, sc: Scenario) -> int:
        """Chains of K steps."""
        assert sc.agent is not None
        return sc.agent.steps

    def records(self, sc: Scenario, units: int) -> int | None:
        """One record per step."""
        assert sc.agent is not None
        return units * sc.agent.steps

    async def run(self, driver: Driver, plan: Plan, origin_ns: int) -> None:
        """Each agent runs its chain's steps one after another."""

        async def unit(stage: Stage) -> bool:
            return await _chain(driver, stage)

        await clients(plan, driver.scenario.concurrency, 0.0, unit, driver.scenario.load.ramp or 0.0)
