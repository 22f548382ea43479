"""Drive one scenario against one backend: warmup, then the measured stage in its load shape; records out.

The runner measures: it sends each request the load shape issues, times it on the wall clock from the
intended send time, and hands the finished measurement to the record writer. When work is issued is
the load shape's business (``agent.run.shapes``); building and writing records is the writer's
(``agent.run.writer``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import itertools
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import structlog

from agent.backends.base import Backend
from agent.backends.capabilities import BatchPrefilling, WatchesArrivals
from agent.core.errors import ConfigError, RequestFailedError
from agent.core.record import (
    ChainRecord,
    Chunk,
    GenerationRequest,
    Measurement,
    NativeTimings,
    RecordIdentity,
    RequestRecord,
    Stage,
    StreamEnd,
    Usage,
)
from agent.core.redact import redact
from agent.core.scenario import Scenario
from agent.run.shapes import Plan, shape, shape_name
from agent.run.shapes.base import (
    BatchOf,
    ChainFailure,
    ChainStep,
    RequestShapes,
    Share,
    Turn,
    batch_text,
    until,
)
from agent.run.shapes.closed import clients, single
from agent.run.writer import Annotator, Finished, RecordSink, RecordWriter, RunOutcome

__all__ = [
    "ColdTracker",
    "RunContext",
    "Runner",
    "expected_records",
    "in_flight",
    "request_shapes",
]

logger = structlog.get_logger(__name__)

#: The garbage collector's young-generation threshold during a load (``steady_gc``); Python's is 700.
#: CPython counts allocations minus deallocations of any age, so when one wave of requests dies as the
#: next is born the count stays low while the young list grows to tens of thousands of objects, and the
#: collection that finally comes scans them all: 15–30 ms with every stream waiting. A load allocates
#: and frees in balance, so at this threshold collections come only from real growth; cyclic garbage
#: (rare here) is still collected once it reaches this many objects.
GC_YOUNG_THRESHOLD = 100_000


@contextlib.contextmanager
def steady_gc(enabled: bool = True) -> Iterator[None]:
    """Collect once and freeze the heap, and raise the young generation's threshold, until the block ends.

    Everything built before the load (modules, schemas, prompts) is set aside for the garbage collector,
    so its collections during the run scan only what the run allocates: a full collection over the whole
    heap would stall every stream for tens of milliseconds.
    """
    if not enabled:
        yield
        return
    gc.collect()
    gc.freeze()
    thresholds = gc.get_threshold()
    gc.set_threshold(max(GC_YOUNG_THRESHOLD, thresholds[0]), *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


@dataclass(slots=True)
class ColdTracker:
    """Marks the first request after a backend starts, and any request after an idle gap, as cold.

    One tracker per backend, shared by every runner that uses it (sweep stages, tenants).
    """

    idle_gap_s: float | None = None
    sent_any: bool = False
    in_flight: int = 0
    idle_since_ns: int = 0

    def begin(self, now_ns: int) -> Literal["first_request", "idle_gap"] | None:
        """Called at each send; returns why this request is cold, if it is."""
        cause: Literal["first_request", "idle_gap"] | None = None
        if not self.sent_any:
            self.sent_any, cause = True, "first_request"
        elif (
            self.idle_gap_s is not None
            and self.in_flight == 0
            and now_ns - self.idle_since_ns >= self.idle_gap_s * 1e9
        ):
            cause = "idle_gap"
        self.in_flight += 1
        return cause

    def end(self, now_ns: int) -> None:
        """Called when a request finishes, whatever its outcome."""
        self.in_flight -= 1
        if self.in_flight == 0:
            self.idle_since_ns = now_ns


@dataclass(slots=True)
class RunContext:
    """What every runner of one run shares.

    Its id and clock origin, the cold-start tracker, the energy annotator, and where chain records and
    each written record's notice go.
    """

    run_id: str
    #: ``perf_counter_ns()`` the records' offsets count from (None: the runner's own start)
    origin_ns: int | None = None
    cold: ColdTracker | None = None
    annotator: Annotator | None = None
    on_record: Callable[[RequestRecord], None] | None = None
    chain_sink: Callable[[ChainRecord], None] | None = None
    #: called after the warmup; the ``perf_counter_ns()`` the measured stage starts at, shared by every
    #: worker process of the run (None: each runner starts when its warmup ends)
    steady_gate: Callable[[], Awaitable[int]] | None = None


def request_shapes(sc: Scenario, requests: list[GenerationRequest] | None = None) -> RequestShapes:
    """What a run of ``sc`` will send, one of each kind, as its load shape says."""
    return shape(shape_name(sc)).request_shapes(sc, requests)


def expected_records(sc: Scenario) -> int | None:
    """How many records a count-bounded run writes, as its load shape says (None when bounded by time)."""
    return shape(shape_name(sc)).expected(sc)


def in_flight(sc: Scenario) -> int:
    """The most requests a run of ``sc`` keeps in flight, as its load shape says."""
    return shape(shape_name(sc)).in_flight(sc)


class Runner:
    """Runs a scenario: warmup (closed loop, recorded apart), then the measured stage and cooldown.

    The measured stage runs in the scenario's load shape (``shape_name``): a closed loop of
    ``concurrency`` clients with optional think time, open-loop arrivals (constant, Poisson, gamma, or
    a trace's own clock) with an in-flight cap, agent chains, or batches. Workers pull work from shared
    iterators, so tasks scale with what is in flight, never with the number of requests. ``stop``
    (SIGINT/SIGTERM) ends the run at once: in-flight requests are written as degraded ``interrupted``
    records; every completed record is written before ``run`` returns.

    ``freeze_gc`` (the default) runs the load under ``steady_gc``; the daemon, which runs one small
    runner per probe, turns it off.
    """

    def __init__(
        self,
        scenario: Scenario,
        backend: Backend,
        sink: RecordSink,
        context: RunContext,
        *,
        requests: Iterator[GenerationRequest] | None = None,
        offsets: Iterable[float] | None = None,
        load_stage: str | None = None,
        freeze_gc: bool = True,
        share: Share | None = None,
    ) -> None:
        self.scenario = scenario
        self.backend = backend
        self.context = context
        self.run_id = context.run_id
        self.load_stage = load_stage
        self.freeze_gc = freeze_gc
        self.offsets = offsets
        self.cold = context.cold or ColdTracker(scenario.load.idle_gap)
        #: this runner's part of the run when worker processes share it (``agent.run.workers``)
        self.share = share or Share()
        self._requests: Iterator[GenerationRequest] = requests or scenario.requests_iter()
        if self.share.count > 1:  # the workload's requests by index, so no two workers send the same one
            self._requests = itertools.islice(self._requests, self.share.index, None, self.share.count)
        self._seq = self.share.index
        self._units_started = 0
        #: ``perf_counter_ns()`` at the run's start: records' offsets are from here (CLOCK_MONOTONIC on
        #: Linux, so a simulator's emission log on the same host lines up with it). Sweep stages and
        #: tenants of one run share it.
        self.start_ns = context.origin_ns or 0
        self._start_unix = 0.0
        self.outcome = RunOutcome(started_unix=time.time())
        #: the backend's arrival probe, called at each request's start and end
        self.arrivals: Callable[[], None] = (
            backend.arrivals if isinstance(backend, WatchesArrivals) else (lambda: None)
        )
        self.writer = RecordWriter(
            sink,
            self.outcome,
            annotator=context.annotator,
            on_record=context.on_record,
            chain_sink=context.chain_sink,
            probe=self.arrivals,
        )
        load = scenario.load
        self._target_rate = load.rate if load.open_loop and offsets is None else None
        #: requests sent and not finished (the exporter's in-flight gauge reads it)
        self.in_flight = 0

    async def run(self, stop: asyncio.Event | None = None) -> RunOutcome:
        """Run to completion or until ``stop`` is set; return the outcome."""
        batch = self.scenario.batch
        if batch is not None and batch.mode == "batched" and not isinstance(self.backend, BatchPrefilling):
            raise ConfigError(
                f"backend '{self.backend.name}' has no batched call; use batch.mode: concurrent"
            )
        stop = stop or asyncio.Event()
        with steady_gc(self.freeze_gc):
            if self.context.origin_ns is None:
                self.start_ns = time.perf_counter_ns()
            self._start_unix = time.time() - (time.perf_counter_ns() - self.start_ns) / 1e9
            self.outcome = self.writer.outcome = RunOutcome(started_unix=self._start_unix)
            await self._until_done_or_stopped(stop)
        return self.outcome

    async def _until_done_or_stopped(self, stop: asyncio.Event) -> None:
        """The stages with the writer beside them; a stop or a write failure cancels the stages."""
        main = asyncio.create_task(self._stages())
        stopper = asyncio.create_task(stop.wait())
        failed = asyncio.create_task(self.writer.failed.wait())
        writer = asyncio.create_task(self.writer.loop())
        try:
            done, _ = await asyncio.wait({main, stopper, failed}, return_when=asyncio.FIRST_COMPLETED)
            if main not in done:
                self.outcome.interrupted = True
                if failed in done:
                    stop.set()  # other tenants writing to the same files stop too
                main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await main
        finally:
            stopper.cancel()
            failed.cancel()
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer  # re-raises a sink failure
            self.writer.drain()
            self.outcome.ended_unix = time.time()

    async def _stages(self) -> None:
        sc = self.scenario
        if sc.warmup:
            await clients(Plan("warmup", sc.warmup), sc.concurrency, 0.0, single(self))
        if self.context.steady_gate is not None:  # one start for every worker: the schedule is shared
            now = await self.context.steady_gate()
            await until(now)
        else:
            now = time.perf_counter_ns()
        self.outcome.steady_start_ns = now
        deadline = now + int(sc.duration * 1e9) if sc.duration else None
        load = shape(shape_name(sc, replay=self.offsets is not None))
        units = load.units(sc, sc.requests) if sc.requests is not None else None
        await load.run(self, Plan("steady", units, deadline, sc.cooldown), now)

    # what load shapes ask of the runner (``agent.run.shapes.Driver``)

    def next_request(self) -> GenerationRequest | None:
        """The next request of the workload, or None when it is used up."""
        return next(self._requests, None)

    def next_unit(self) -> int:
        """A new unit (chain, batch, conversation) number, unique across the run's worker processes."""
        self._units_started += 1
        return self.share.index + self.share.count * (self._units_started - 1)

    def not_sent(self) -> None:
        """Count a request due before the end that never got a worker."""
        self.outcome.not_sent += 1

    def chain_done(
        self,
        chain_id: str,
        stage: Stage,
        t0_ns: int,
        think_ns: int,
        records: list[RequestRecord],
        failure: ChainFailure | None,
    ) -> None:
        """Write the chain record of a finished (or failed, or interrupted) agent chain."""
        assert self.scenario.agent is not None
        ok = failure is None
        self.writer.emit_chain(
            ChainRecord(
                run_id=self.run_id,
                scenario=self.scenario.name,
                chain_id=chain_id,
                stage=stage,
                status="ok" if ok else "degraded",
                reason=failure.reason if failure else None,
                failed_step=failure.failed_step if failure else None,
                steps_planned=self.scenario.agent.steps,
                steps_done=sum(r.status == "ok" for r in records),
                started_offset_ms=(t0_ns - self.start_ns) / 1e6,
                chain_e2e_ms=(time.perf_counter_ns() - t0_ns) / 1e6,
                think_ms=think_ns / 1e6,
                prompt_tokens=_sum(r.prompt_tokens for r in records),
                output_tokens=_sum(r.output_tokens for r in records),
            )
        )

    async def batched(self, requests: list[GenerationRequest], stage: Stage, batch: BatchOf) -> None:
        """One batched call of the backend, measured as one record."""
        backend = self.backend
        assert isinstance(backend, BatchPrefilling)  # checked in run()
        prompts = [batch_text(r) for r in requests]
        ident = self._identity(requests[0], stage, batch=batch)
        ident = dataclasses.replace(ident, request_id=batch.batch_id, endpoint="prefill_batch")

        async def call_once(m: Measurement) -> None:
            async with asyncio.timeout(self.scenario.timeout.total_s):
                result = await backend.prefill_batch(prompts)
            usage = Usage(result.prompt_tokens, 0, source="engine")
            native = NativeTimings(source=self.backend.name, prefill_ms=result.prefill_ms)
            m.observe(StreamEnd(time.perf_counter_ns(), usage=usage, native=native, finish_reason="length"))

        await self._measure(ident, call_once, intended_ns=None, keep_text=False)

    def _identity(
        self,
        request: GenerationRequest,
        stage: Stage,
        *,
        chain: ChainStep | None = None,
        batch: BatchOf | None = None,
        conversation: Turn | None = None,
    ) -> RecordIdentity:
        seq = self._seq
        self._seq += self.share.count
        level = self._ramp_level() if stage == "steady" else None
        target_rate, clients = level if level is not None else (self._target_rate, None)
        return RecordIdentity(
            run_id=self.run_id,
            scenario=self.scenario.name,
            request_id=request.request_id,
            seq=seq,
            backend=self.backend.name,
            model=request.model or self.backend.model,
            endpoint=request.endpoint,
            stage=stage,
            prompt_id=request.prompt_id,
            requested_output_tokens=request.max_tokens,
            step=chain.step if chain else None,
            chain_id=chain.chain_id if chain else request.session_id,
            load_stage=self.load_stage,
            target_rate=target_rate,
            batch_id=batch.batch_id if batch else None,
            batch_size=batch.size if batch else None,
            requested_prompt_tokens=request.prompt_tokens_target,
            prefix_group=request.prefix_group,
            template_tokens=request.template_tokens,
            conversation_id=conversation.conversation_id if conversation else None,
            turn=conversation.turn if conversation else None,
            streamed=None if request.stream else False,
            clients=clients,
        )

    def _ramp_level(self) -> tuple[float | None, int | None] | None:
        """During a ramp: the rate (open loop) or clients (closed loop) in effect now, for the record."""
        load = self.scenario.load
        start = self.outcome.steady_start_ns
        if not load.ramp or not start or self.offsets is not None:
            return None
        t = (time.perf_counter_ns() - start) / 1e9
        if load.open_loop:
            return load.rate_at(t), None
        return self._target_rate, min(
            self.scenario.concurrency, 1 + int(t / load.ramp * self.scenario.concurrency)
        )

    async def one(
        self,
        request: GenerationRequest,
        stage: Stage,
        *,
        intended_ns: int | None = None,
        chain: ChainStep | None = None,
        batch: BatchOf | None = None,
        keep_text: bool | None = None,
        conversation: Turn | None = None,
        before_ns: int | None = None,
    ) -> RequestRecord | None:
        """Send and measure one request; its record for a chain step or turn, else queued (None).

        ``before_ns``: the run's end for an open loop; a send that would come at or after it is not made.
        """
        ident = self._identity(request, stage, chain=chain, batch=batch, conversation=conversation)
        every = self.scenario.keep_output_every
        keep = keep_text if keep_text is not None else every > 0 and ident.seq % every == 0
        request.want_text = keep  # the runner made this request; the backend may skip decoding text

        async def consume(m: Measurement) -> None:
            await self._consume(request, m)

        return await self._measure(
            ident,
            consume,
            intended_ns=intended_ns,
            keep_text=keep,
            defer=chain is None and conversation is None,
            before_ns=before_ns,
        )

    async def _measure(
        self,
        ident: RecordIdentity,
        body: Callable[[Measurement], Any],
        *,
        intended_ns: int | None,
        keep_text: bool,
        defer: bool = False,
        before_ns: int | None = None,
    ) -> RequestRecord | None:
        """Time ``body``; the record is returned, or only queued for the writer task when ``defer``.

        Request starts and ends, and records being written, are where a long loop turn spends its
        time; each lets the arrival probe note bytes that came meanwhile (``agent.transport.probe``).
        """
        self.arrivals()
        now = time.perf_counter_ns()
        if before_ns is not None and now >= before_ns:  # the very reading the record calls its send time
            self.not_sent()
            return None
        cause = self.cold.begin(now)
        if cause is not None:
            ident = dataclasses.replace(ident, cold_cause=cause)
        m = Measurement(
            self.start_ns,
            self._start_unix,
            intended_ns or now,
            now,
            keep_text=keep_text,
            text_cap=self.scenario.max_output_chars,
        )
        failure: tuple[str, str] | None = None
        self.in_flight += 1
        try:
            await body(m)
        except TimeoutError:
            failure = self._timed_out(m)
        except RequestFailedError as e:
            failure = (e.reason, redact(e.detail))
        except asyncio.CancelledError:
            self.in_flight -= 1
            self.cold.end(time.perf_counter_ns())
            self.writer.emit(
                m.to_record(ident, failure=("interrupted", "run stopped"), now_ns=time.perf_counter_ns())
            )
            raise
        except Exception as e:
            logger.exception("request raised", request_id=ident.request_id)
            failure = ("client_error", redact(f"{e.__class__.__name__}: {e}"))
        end = time.perf_counter_ns()
        self.arrivals()
        self.in_flight -= 1
        self.cold.end(end)
        finished = Finished(m, ident, failure, end)
        if defer:
            self.writer.queue(finished)
            return None
        record = self.writer.write(finished)
        self.writer.wake()  # the writer's task flushes the sink
        return record

    def _timed_out(self, m: Measurement) -> tuple[str, str]:
        """Which timeout ended the request: before any output token, or before the end of the stream."""
        t = self.scenario.timeout
        if m.text_ns:
            return ("timeout_total", f"no end of stream within {t.total_s} s")
        return ("timeout_first_token", f"no output token within {min(t.first_token_s, t.total_s)} s")

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


def _sum(values: Iterable[int | None]) -> int | None:
    present = [v for v in values if v is not None]
    return sum(present) if present else None
