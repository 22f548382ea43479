"""Drive one scenario against one backend: schedule, concurrency, warmup, deadlines, records out."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from agent.backends.base import Backend
from agent.errors import RequestFailedError
from agent.record import Chunk, GenerationRequest, Measurement, RecordIdentity, RequestRecord, Stage
from agent.scenario import Scenario

__all__ = ["RecordSink", "RunOutcome", "Runner"]

logger = structlog.get_logger(__name__)


class RecordSink(Protocol):
    """Where finished records go (the JSONL writer, an exporter, a test list)."""

    def write(self, record: RequestRecord) -> None:
        """Take one finished record; must not block the event loop for long."""


@dataclass(slots=True)
class RunOutcome:
    """What happened: counts by status and reason, and whether the run was interrupted."""

    started_unix: float
    ended_unix: float = 0.0
    interrupted: bool = False
    by_status: Counter[str] = field(default_factory=Counter)
    by_reason: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        """Records written."""
        return sum(self.by_status.values())


class Runner:
    """Runs a scenario's warmup then steady stage with N closed-loop workers.

    Workers pull the next request from one shared iterator, so there is never a task per request.
    ``stop`` (set by SIGINT/SIGTERM) ends the run at once: in-flight requests are cancelled and written
    as degraded ``interrupted`` records; every completed record has already been written.
    """

    def __init__(
        self,
        scenario: Scenario,
        backend: Backend,
        sink: RecordSink,
        *,
        run_id: str,
        on_record: Callable[[RequestRecord], None] | None = None,
    ) -> None:
        self.scenario = scenario
        self.backend = backend
        self.sink = sink
        self.run_id = run_id
        self.on_record = on_record
        self._requests: Iterator[GenerationRequest] = scenario.requests_iter()
        self._seq = 0
        #: ``perf_counter_ns()`` at the run's start: records' offsets are from here (CLOCK_MONOTONIC on
        #: Linux, so a simulator's emission log on the same host lines up with it).
        self.start_ns = 0
        self._start_unix = 0.0
        self.outcome = RunOutcome(started_unix=time.time())

    async def run(self, stop: asyncio.Event | None = None) -> RunOutcome:
        """Run to completion or until ``stop`` is set; return the outcome."""
        stop = stop or asyncio.Event()
        self.start_ns = time.perf_counter_ns()
        self._start_unix = time.time()
        self.outcome = RunOutcome(started_unix=self._start_unix)
        main = asyncio.create_task(self._stages())
        stopper = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait({main, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if main not in done:
                self.outcome.interrupted = True
                main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await main
        finally:
            stopper.cancel()
            self.outcome.ended_unix = time.time()
        return self.outcome

    async def _stages(self) -> None:
        sc = self.scenario
        if sc.warmup:
            await self._closed_loop("warmup", count=sc.warmup, duration_s=None, concurrency=sc.concurrency)
        await self._closed_loop(
            "steady", count=sc.requests, duration_s=sc.duration, concurrency=sc.concurrency
        )

    async def _closed_loop(
        self, stage: Stage, *, count: int | None, duration_s: float | None, concurrency: int
    ) -> None:
        deadline = time.perf_counter_ns() + int(duration_s * 1e9) if duration_s else None
        issued = 0

        async def worker() -> None:
            nonlocal issued
            while (count is None or issued < count) and (
                deadline is None or time.perf_counter_ns() < deadline
            ):
                issued += 1
                await self._one(next(self._requests), stage)

        workers = min(concurrency, count) if count is not None else concurrency
        async with asyncio.TaskGroup() as tg:
            for _ in range(workers):
                tg.create_task(worker())

    async def _one(self, request: GenerationRequest, stage: Stage) -> None:
        seq = self._seq
        self._seq += 1
        sc = self.scenario
        now = time.perf_counter_ns()
        keep = sc.keep_output_every > 0 and seq % sc.keep_output_every == 0
        m = Measurement(self.start_ns, self._start_unix, now, now, keep_text=keep)
        ident = RecordIdentity(
            run_id=self.run_id,
            scenario=sc.name,
            request_id=request.request_id,
            seq=seq,
            backend=self.backend.name,
            model=self.backend.model,
            endpoint=request.endpoint,
            stage=stage,
            prompt_id=request.prompt_id,
            requested_output_tokens=request.max_tokens,
        )
        failure: tuple[str, str] | None = None
        try:
            await self._consume(request, m)
        except TimeoutError:
            t = sc.timeout
            failure = (
                ("timeout_total", f"no end of stream within {t.total_s} s")
                if m.text_ns
                else ("timeout_first_token", f"no output token within {min(t.first_token_s, t.total_s)} s")
            )
        except RequestFailedError as e:
            failure = (e.reason, e.detail)
        except asyncio.CancelledError:
            self._emit(
                m.to_record(ident, failure=("interrupted", "run stopped"), now_ns=time.perf_counter_ns())
            )
            raise
        except Exception as e:
            logger.exception("request raised", request_id=request.request_id)
            failure = ("client_error", f"{e.__class__.__name__}: {e}")
        self._emit(m.to_record(ident, failure=failure, now_ns=time.perf_counter_ns()))

    async def _consume(self, request: GenerationRequest, m: Measurement) -> None:
        t = self.scenario.timeout
        loop = asyncio.get_running_loop()
        start = loop.time() - (time.perf_counter_ns() - m.intended_ns) / 1e9
        total_at = start + t.total_s
        async with asyncio.timeout_at(min(start + t.first_token_s, total_at)) as cm:
            waiting_first = True
            async for event in self.backend.stream(request):
                m.observe(event)
                if waiting_first and isinstance(event, Chunk):
                    waiting_first = False
                    cm.reschedule(total_at)

    def _emit(self, record: RequestRecord) -> None:
        self.sink.write(record)
        self.outcome.by_status[record.status] += 1
        if record.reason:
            self.outcome.by_reason[record.reason] += 1
        if self.on_record is not None:
            self.on_record(record)
