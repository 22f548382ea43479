"""Test doubles shared by the unit tests: a list sink and a scripted in-memory backend."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from agent.core.errors import RequestFailedError
from agent.core.record import (
    Chunk,
    GenerationRequest,
    NativeTimings,
    RequestRecord,
    StreamEnd,
    StreamEvent,
    Usage,
)


class ListSink:
    def __init__(self) -> None:
        self.records: list[RequestRecord] = []

    def write(self, record: RequestRecord) -> None:
        self.records.append(record)


class ScriptedBackend:
    """A backend whose behaviour per request is scripted: 'ok', 'fail', 'stall_first', 'stall_mid'."""

    name = "scripted"
    model = "toy"

    def __init__(self, script: list[str] | None = None, tokens: int = 3, gap_s: float = 0.001) -> None:
        self.script = script or []
        self.tokens = tokens
        self.gap_s = gap_s
        self.calls = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.reached: dict[int, asyncio.Event] = {}
        self.requests: list[GenerationRequest] = []
        self.sent_ns: list[int] = []

    def when_called(self, n: int) -> asyncio.Event:
        return self.reached.setdefault(n, asyncio.Event())

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name}

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        mode = self.script[self.calls] if self.calls < len(self.script) else "ok"
        self.requests.append(request)
        self.sent_ns.append(time.perf_counter_ns())
        self.calls += 1
        self.when_called(self.calls).set()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if mode == "fail":
                raise RequestFailedError("http_503", "overloaded")
            if mode == "stall_first":
                await asyncio.sleep(10)
            for i in range(self.tokens):
                await asyncio.sleep(self.gap_s)
                yield Chunk(time.perf_counter_ns(), f"w{i} ")
                if mode == "stall_mid":
                    await asyncio.sleep(10)
            native = NativeTimings("test", prefill_ms=0.0, decode_ms=0.0)
            yield StreamEnd(time.perf_counter_ns(), Usage(5, self.tokens), native, "length")
        finally:
            self.in_flight -= 1


@dataclass
class Prefill:
    prompts: int
    padded_len: int
    prompt_tokens: int
    prefill_ms: float


class BatchingBackend(ScriptedBackend):
    """A scripted backend that also has one batched prefill call."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[str]] = []

    async def prefill_batch(self, prompts: list[str]) -> Prefill:
        self.batches.append(prompts)
        await asyncio.sleep(0.002)
        return Prefill(len(prompts), 4, 3 * len(prompts), 2.0)
