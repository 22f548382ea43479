"""Conversations: each client is one user replaying a dataset's conversation turn by turn.

Every turn's prompt is the conversation so far: the earlier turns and their answers (the server's own,
or the dataset's when the workload asks), then the next user turn; the user thinks between turns.
"""

from __future__ import annotations

import asyncio
import dataclasses

from agent.core.record import GenerationRequest, Stage
from agent.core.scenario import Scenario
from agent.core.workload import DatasetWorkload
from agent.run.shapes.base import Driver, Plan, Shape, Turn, register
from agent.run.shapes.closed import clients
from agent.run.shapes.open import arrivals, dispatch, mine

__all__ = ["Conversations"]


def _next_turn(
    base: GenerationRequest, messages: list[dict[str, str]], prompt: str | None, answer: str, text: str
) -> tuple[list[dict[str, str]], str | None]:
    """The context after one more answer and the next user turn."""
    if base.messages is not None:
        return [
            *messages,
            {"role": "assistant", "content": answer},
            {"role": "user", "content": text},
        ], prompt
    return messages, f"{prompt or ''}{answer}\n\n{text}"


async def _conversation(driver: Driver, stage: Stage) -> bool:
    """One conversation; False when the workload is used up."""
    base = driver.next_request()
    if base is None:
        return False
    await _turns(driver, base, stage)
    return True


async def _turns(
    driver: Driver, base: GenerationRequest, stage: Stage, intended_ns: int | None = None
) -> None:
    """Every turn of the conversation ``base`` opens (its first turn due at ``intended_ns``)."""
    wl = driver.scenario.workload
    from_data = isinstance(wl, DatasetWorkload) and wl.answers == "dataset"
    conv_id = f"{base.prompt_id}~{driver.next_unit():05d}"
    messages, prompt = list(base.messages or []), base.prompt
    answers = [base.answer, *(t.answer for t in base.turns)]
    request = dataclasses.replace(base, request_id=f"{conv_id}-t0", turns=())
    for turn in range(len(base.turns) + 1):
        due = intended_ns if turn == 0 else None
        rec = await driver.one(
            request, stage, intended_ns=due, conversation=Turn(conv_id, turn), keep_text=True
        )
        assert rec is not None  # turns are never deferred: the next prompt needs the answer
        if rec.status != "ok" or turn == len(base.turns):
            return
        nxt = base.turns[turn]
        answer = (answers[turn] if from_data else None) or rec.output_text or ""
        messages, prompt = _next_turn(base, messages, prompt, answer, nxt.text)
        if nxt.think_s:
            await asyncio.sleep(nxt.think_s)
        request = dataclasses.replace(
            base,
            request_id=f"{conv_id}-t{turn + 1}",
            messages=messages if base.messages is not None else None,
            prompt=prompt if base.messages is None else None,
            max_tokens=nxt.output_tokens or driver.scenario.output_tokens,
            prompt_tokens_target=None,
            turns=(),
            answer=None,
        )


@register("conversation")
class Conversations(Shape):
    """``concurrency`` users, each replaying one conversation after another; open loop: users arrive.

    In an open loop each arrival is a new user starting a conversation at its due time, so the rate is
    one of sessions and the turns of many users overlap.
    """

    unit = "conversation"

    def records(self, sc: Scenario, units: int) -> int | None:
        """As many records as the conversations have turns (known once the workload's prompts are made)."""
        made = sc.made
        if made is None:
            return None
        turns = [1 + len(p.turns) for p in made]
        whole, part = divmod(units, len(turns))
        return whole * sum(turns) + sum(turns[:part])

    async def run(self, driver: Driver, plan: Plan, origin_ns: int) -> None:
        """Each user's turns in order, the context growing by each answer."""
        load = driver.scenario.load
        if load.open_loop:

            async def start(request: GenerationRequest, stage: Stage, due_ns: int) -> None:
                await _turns(driver, request, stage, due_ns)

            await dispatch(driver, plan, origin_ns, mine(driver, arrivals(load)), send=start)
            return

        async def unit(stage: Stage) -> bool:
            return await _conversation(driver, stage)

        await clients(plan, driver.scenario.concurrency, 0.0, unit, driver.scenario.load.ramp or 0.0)
