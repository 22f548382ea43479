"""Drive one scenario against one backend: load model, stages, deadlines, records out."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import itertools
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import structlog

from agent.backends.base import Backend
from agent.core.arrivals import schedule
from agent.core.errors import ConfigError, RecordWriteError, RequestFailedError
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
from agent.core.scenario import MAX_IN_FLIGHT, Scenario
from agent.transport.probe import ARRIVALS

__all__ = [
    "Annotator",
    "ColdTracker",
    "RecordSink",
    "RunOutcome",
    "Runner",
    "expected_records",
    "request_shapes",
    "wait_ready",
]

#: at most this many batches are warmed per scenario (prompts cycle, so batches repeat sooner)
WARM_BATCHES = 64

logger = structlog.get_logger(__name__)

#: Longest stretch the record writer holds the event loop before letting streams read again, while
#: it is keeping up (see ``BACKLOG_KEEP`` and ``BACKLOG_AGE_NS``).
WRITE_SLICE_NS = 500_000
#: A writer turn goes past its slice until at most this many finished records wait...
BACKLOG_KEEP = 256
#: ...and none of them ended longer ago than this: under any load, what a killed run can lose is the
#: last moments' completions, never a growing backlog.
BACKLOG_AGE_NS = 50_000_000
#: Hard bounds on records waiting for the writer: a request that ends with this many waiting, or with
#: the oldest waiting longer than ``BACKLOG_LATE_NS``, writes them itself before its worker goes on
#: (back-pressure), so the bounds hold even when one loop turn lasts longer than they do.
BACKLOG_LIMIT = 1000
BACKLOG_LATE_NS = 80_000_000

#: The garbage collector's young-generation threshold during a load (``freeze_gc``); Python's is 700.
#: CPython counts allocations minus deallocations of any age, so when one wave of requests dies as the
#: next is born the count stays low while the young list grows to tens of thousands of objects, and the
#: collection that finally comes scans them all: 15–30 ms with every stream waiting. A load allocates
#: and frees in balance, so at this threshold collections come only from real growth; cyclic garbage
#: (rare here) is still collected once it reaches this many objects.
GC_YOUNG_THRESHOLD = 100_000


class Annotator(Protocol):
    """Adds fields measured outside the stream to a finished request's record (the energy meter)."""

    #: how long the writer may hold a record waiting for ``ready``
    max_wait_s: float

    def ready(self, end_ns: int) -> bool:
        """Whether everything needed to annotate a request that ended at ``end_ns`` has arrived."""

    def request_fields(self, sent_ns: int, first_ns: int | None, end_ns: int) -> dict[str, Any]:
        """Extra record fields for a request sent at ``sent_ns`` whose first token came at ``first_ns``."""


async def wait_ready(annotator: Annotator, end_ns: int) -> None:
    """Wait until ``annotator`` is ready for ``end_ns``, at most its ``max_wait_s``.

    Readiness is set by another thread (the power poller), so this polls rather than awaits an event.
    """
    deadline = time.monotonic() + annotator.max_wait_s
    while not annotator.ready(end_ns) and time.monotonic() < deadline:  # noqa: ASYNC110 - set on another thread
        await asyncio.sleep(0.01)


class RecordSink(Protocol):
    """Where finished records go (the JSONL writer, an exporter, a test list).

    A sink that buffers also has ``flush()``; the runner calls it after each batch of records it writes.
    """

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
    chains: Counter[str] = field(default_factory=Counter)
    #: most finished records that ever waited for the writer at once
    backlog_max: int = 0
    #: longest time from a request's end to its record being handed to the operating system
    write_delay_ms_max: float = 0.0
    #: why records could no longer be written, when that stopped the run
    write_error: RecordWriteError | None = None
    #: ``perf_counter_ns()`` when the warmup was over and the measured stage began (0 until then)
    steady_start_ns: int = 0
    #: open loop bound by time: requests due before the end that were still waiting for a free worker
    #: when it came, so never sent (an overloaded client or a tight in-flight cap)
    not_sent: int = 0

    @property
    def total(self) -> int:
        """Records written."""
        return sum(self.by_status.values())


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
class _Plan:
    """Labels each unit of work as it is issued.

    ``count`` units (or until ``deadline``) of one stage, then ``cooldown`` more, then None (stop).
    """

    stage: Stage
    count: int | None
    deadline_ns: int | None = None
    cooldown: int = 0
    issued: int = 0
    cooled: int = 0

    def take(self, at_ns: int) -> Stage | None:
        if (self.count is None or self.issued < self.count) and (
            self.deadline_ns is None or at_ns < self.deadline_ns
        ):
            self.issued += 1
            return self.stage
        if self.cooled < self.cooldown:
            self.cooled += 1
            return "cooldown"
        return None

    def bound(self) -> int | None:
        return None if self.count is None else self.count + self.cooldown


def _units(sc: Scenario, requests: int | None) -> int | None:
    """Records → units of work: chains of K steps, or batches of N prompts."""
    if requests is None:
        return None
    if sc.agent is not None:
        return math.ceil(requests / sc.agent.steps)
    if sc.batch is not None:
        return math.ceil(requests / sc.batch.size)
    return requests


def request_shapes(
    sc: Scenario, requests: list[GenerationRequest] | None = None
) -> tuple[list[GenerationRequest], list[list[str]]]:
    """What a run of ``sc`` will send, one of each kind: single requests, and batched calls' prompts.

    Single requests: one per prompt (a replay's own requests when given). A batched scenario sends only
    batches; its prompts cycle, so the batches repeat after ``lcm(prompts, size)`` requests. Agent chains
    grow their context from answers, so only their first steps can be known before the run.
    """
    if requests is None:
        requests = list(itertools.islice(sc.requests_iter(), len(sc.prompt_list())))
    if sc.batch is None or sc.batch.mode != "batched" or not requests:
        return requests, []
    size = sc.batch.size
    count = min(math.lcm(len(requests), size), WARM_BATCHES * size)
    prompts = [_batch_text(r) for r in itertools.islice(itertools.cycle(requests), count)]
    return [], [prompts[i : i + size] for i in range(0, count, size)]


def expected_records(sc: Scenario) -> int | None:
    """How many records a count-bounded run writes (None when bounded by time)."""
    units = _units(sc, sc.requests)
    if units is None:
        return None
    units += sc.cooldown
    if sc.agent is not None:
        units *= sc.agent.steps
    elif sc.batch is not None and sc.batch.mode == "concurrent":
        units *= sc.batch.size
    return sc.warmup + units


class Runner:
    """Runs a scenario: warmup (closed loop, recorded apart), then the measured stage and cooldown.

    The measured stage is a closed loop of ``concurrency`` clients with optional think time, open-loop
    arrivals (constant, Poisson, gamma, or a trace's own clock) with an in-flight cap, agent chains, or
    batches. Workers pull work from shared iterators, so tasks scale with what is in flight, never with
    the number of requests. ``stop`` (SIGINT/SIGTERM) ends the run at once: in-flight requests are written
    as degraded ``interrupted`` records; every completed record is written before ``run`` returns.

    ``freeze_gc`` (the default) collects once and freezes the heap before the load and raises the young
    generation's threshold to ``GC_YOUNG_THRESHOLD`` until the run ends, so the garbage collector seldom
    pauses the streams, and briefly when it does; the daemon, which runs one small runner per probe,
    turns it off.

    A finished request's record is built and written off the hot path: the request's task only queues
    its measurement, and a writer task builds queued records in slices of at most ``WRITE_SLICE_NS``,
    so a burst of requests ending together never holds up the timestamps of streams still reading.
    """

    def __init__(
        self,
        scenario: Scenario,
        backend: Backend,
        sink: RecordSink,
        *,
        run_id: str,
        on_record: Callable[[RequestRecord], None] | None = None,
        requests: Iterator[GenerationRequest] | None = None,
        offsets: Iterable[float] | None = None,
        load_stage: str | None = None,
        chain_sink: Callable[[ChainRecord], None] | None = None,
        cold: ColdTracker | None = None,
        origin_ns: int | None = None,
        annotator: Annotator | None = None,
        freeze_gc: bool = True,
    ) -> None:
        self.scenario = scenario
        self.freeze_gc = freeze_gc
        self.backend = backend
        self.sink = sink
        self.run_id = run_id
        self.on_record = on_record
        self.chain_sink = chain_sink
        self.load_stage = load_stage
        self.annotator = annotator
        self.cold = cold or ColdTracker(scenario.load.idle_gap)
        self._requests: Iterator[GenerationRequest] = requests or scenario.requests_iter()
        self._offsets = offsets
        self._seq = 0
        self._units_started = 0
        #: ``perf_counter_ns()`` at the run's start: records' offsets are from here (CLOCK_MONOTONIC on
        #: Linux, so a simulator's emission log on the same host lines up with it). Sweep stages and
        #: tenants of one run share it.
        self.start_ns = origin_ns or 0
        self._fixed_origin = origin_ns is not None
        self._start_unix = 0.0
        self.outcome = RunOutcome(started_unix=time.time())
        load = scenario.load
        self._target_rate = load.rate if load.open_loop and offsets is None else None
        #: requests sent and not finished (the exporter's in-flight gauge reads it)
        self.in_flight = 0
        self._backlog: deque[_Finished] = deque()
        self._backlog_ready = asyncio.Event()
        #: end of the oldest request whose record was written but not yet flushed
        self._unflushed_end_ns: int | None = None
        self._write_failed = asyncio.Event()

    async def run(self, stop: asyncio.Event | None = None) -> RunOutcome:
        """Run to completion or until ``stop`` is set; return the outcome."""
        batch = self.scenario.batch
        batched = batch is not None and batch.mode == "batched"
        if batched and not callable(getattr(self.backend, "prefill_batch", None)):
            raise ConfigError(
                f"backend '{self.backend.name}' has no batched call; use batch.mode: concurrent"
            )
        stop = stop or asyncio.Event()
        if self.freeze_gc:
            # Everything built before the load (modules, schemas, prompts) is set aside for the garbage
            # collector, so its collections during the run scan only what the run allocates: a full
            # collection over the whole heap would stall every stream for tens of milliseconds.
            gc.collect()
            gc.freeze()
            thresholds = gc.get_threshold()
            gc.set_threshold(max(GC_YOUNG_THRESHOLD, thresholds[0]), *thresholds[1:])
        if not self._fixed_origin:
            self.start_ns = time.perf_counter_ns()
        self._start_unix = time.time() - (time.perf_counter_ns() - self.start_ns) / 1e9
        self.outcome = RunOutcome(started_unix=self._start_unix)
        main = asyncio.create_task(self._stages())
        stopper = asyncio.create_task(stop.wait())
        failed = asyncio.create_task(self._write_failed.wait())
        writer = asyncio.create_task(self._write_backlog())
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
            self._flush_backlog()
            self.outcome.ended_unix = time.time()
            if self.freeze_gc:
                gc.set_threshold(*thresholds)
                gc.unfreeze()
        return self.outcome

    async def _write_backlog(self) -> None:
        """Build and write queued records, flushing the sink after each turn, until cancelled.

        A turn ends after ``WRITE_SLICE_NS`` so records built together never hold up the loop for
        long (streams still reading keep being read on time), but only once the writer has caught up:
        at most ``BACKLOG_KEEP`` records wait, none older than ``BACKLOG_AGE_NS``. A saturated loop
        runs few turns, so each must write what came since the last one.
        """
        backlog = self._backlog
        while True:
            await self._backlog_ready.wait()
            self._backlog_ready.clear()
            while True:
                until = time.perf_counter_ns() + WRITE_SLICE_NS
                waiting = False
                while backlog:
                    now = time.perf_counter_ns()
                    head = backlog[0].end_ns
                    behind = self._behind(now)
                    if now >= until and not behind:
                        break
                    if self.annotator is not None and not behind and not self.annotator.ready(head):
                        waiting = True
                        break
                    self._write(backlog.popleft())
                    ARRIVALS()
                self._flush_sink()
                if not backlog:
                    break
                if waiting:
                    assert self.annotator is not None
                    await wait_ready(self.annotator, backlog[0].end_ns)  # then written, ready or not
                    self._write(backlog.popleft())
                else:
                    await asyncio.sleep(0)

    def _behind(self, now_ns: int) -> bool:
        """Whether the (non-empty) backlog holds too many records, or its oldest waited too long."""
        return len(self._backlog) > BACKLOG_KEEP or now_ns - self._backlog[0].end_ns > BACKLOG_AGE_NS

    def _queue(self, finished: _Finished) -> None:
        """Queue a finished request for the writer task; when the writer is starved, catch up first."""
        backlog = self._backlog
        end = finished.end_ns
        if backlog and (len(backlog) >= BACKLOG_LIMIT or end - backlog[0].end_ns > BACKLOG_LATE_NS):
            self._catch_up(end)  # this worker pays before going on
        backlog.append(finished)
        self.outcome.backlog_max = max(self.outcome.backlog_max, len(backlog))
        self._backlog_ready.set()

    def _catch_up(self, now_ns: int) -> None:
        """Write queued records until the writer's own turn would stop (few and recent), then flush."""
        backlog = self._backlog
        while backlog and self._behind(now_ns):
            self._write(backlog.popleft())
            ARRIVALS()
        self._flush_sink()

    def _flush_backlog(self) -> None:
        while self._backlog:
            self._write(self._backlog.popleft())
        self._flush_sink()

    def _flush_sink(self) -> None:
        flush = getattr(self.sink, "flush", None)
        if flush is not None and self.outcome.write_error is None:
            try:
                flush()
            except RecordWriteError as e:
                self._cannot_write(e)
        if self._unflushed_end_ns is not None:
            delay = (time.perf_counter_ns() - self._unflushed_end_ns) / 1e6
            self.outcome.write_delay_ms_max = max(self.outcome.write_delay_ms_max, delay)
            self._unflushed_end_ns = None

    async def _stages(self) -> None:
        sc = self.scenario
        if sc.warmup:
            await self._closed(_Plan("warmup", sc.warmup), sc.concurrency, 0.0)
        now = self.outcome.steady_start_ns = time.perf_counter_ns()
        deadline = now + int(sc.duration * 1e9) if sc.duration else None
        plan = _Plan("steady", _units(sc, sc.requests), deadline, sc.cooldown)
        if sc.agent is not None:
            await self._closed(plan, sc.concurrency, 0.0, unit=self._chain)
        elif sc.batch is not None:
            await self._closed(plan, sc.concurrency, 0.0, unit=self._batch)
        elif self._offsets is not None or sc.load.open_loop:
            await self._open(plan, now)
        else:
            await self._closed(plan, sc.concurrency, sc.load.think_time or 0.0)

    async def _closed(
        self,
        plan: _Plan,
        concurrency: int,
        think_s: float,
        unit: Callable[[Stage], Any] | None = None,
    ) -> None:
        async def single(stage: Stage) -> bool:
            request = next(self._requests, None)
            if request is None:
                return False
            await self._one(request, stage)
            return True

        work = unit or single

        async def client() -> None:
            while (stage := plan.take(time.perf_counter_ns())) is not None:
                if await work(stage) is False:
                    return
                if think_s:
                    await asyncio.sleep(think_s)

        bound = plan.bound()
        clients = min(concurrency, bound) if bound is not None else concurrency
        async with asyncio.TaskGroup() as tg:
            for _ in range(clients):
                tg.create_task(client())

    async def _open(self, plan: _Plan, origin_ns: int) -> None:
        """Open loop: send at the intended times; workers are added only when none is free."""
        load = self.scenario.load
        if self._offsets is not None:
            offsets: Iterable[float] = self._offsets
        else:
            assert load.rate is not None  # the scenario validator requires it for open loop
            offsets = schedule(load.arrival, load.rate, burstiness=load.burstiness, seed=load.seed)  # type: ignore[arg-type]
        cap = load.max_concurrency or MAX_IN_FLIGHT
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
                    self.outcome.not_sent += 1  # the run's time is up: never sent, so never recorded
                    continue
                await self._one(item[0], item[1], intended_ns=item[2])

        async with asyncio.TaskGroup() as tg:
            for offset in offsets:
                intended = origin_ns + int(offset * 1e9)
                # a dispatcher behind its schedule stops at the run's end all the same
                stage = plan.take(max(intended, time.perf_counter_ns()))
                if stage is None:
                    break
                request = next(self._requests, None)
                if request is None:
                    break
                await _until(intended)
                if idle <= queue.qsize() and workers < cap:
                    workers += 1
                    tg.create_task(worker())
                queue.put_nowait((request, stage, intended))
            for _ in range(workers):
                queue.put_nowait(None)

    async def _chain(self, stage: Stage) -> bool:
        """One agent chain: K steps, each prompt the conversation so far plus a tool result."""
        sc = self.scenario
        assert sc.agent is not None
        base = next(self._requests, None)
        if base is None:
            return False
        chain_id = f"{sc.name}-chain-{self._units_started:05d}"
        self._units_started += 1
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
                rec = await self._one(req, stage, chain=(chain_id, step), keep_text=True)
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
            self._emit_chain(chain_id, stage, t0, think_ns, done, records, ("interrupted", done))
            raise
        fail = (failed.reason or "degraded", done) if failed is not None else None
        self._emit_chain(chain_id, stage, t0, think_ns, done, records, fail)
        return True

    def _emit_chain(
        self,
        chain_id: str,
        stage: Stage,
        t0: int,
        think_ns: int,
        done: int,
        records: list[RequestRecord],
        failure: tuple[str, int] | None,
    ) -> None:
        assert self.scenario.agent is not None
        ok = failure is None
        self.outcome.chains["ok" if ok else "degraded"] += 1
        if self.chain_sink is None or self.outcome.write_error is not None:
            return
        chain = ChainRecord(
            run_id=self.run_id,
            scenario=self.scenario.name,
            chain_id=chain_id,
            stage=stage,
            status="ok" if ok else "degraded",
            reason=failure[0] if failure else None,
            failed_step=failure[1] if failure else None,
            steps_planned=self.scenario.agent.steps,
            steps_done=done,
            started_offset_ms=(t0 - self.start_ns) / 1e6,
            chain_e2e_ms=(time.perf_counter_ns() - t0) / 1e6,
            think_ms=think_ns / 1e6,
            prompt_tokens=_sum(r.prompt_tokens for r in records),
            output_tokens=_sum(r.output_tokens for r in records),
        )
        try:
            self.chain_sink(chain)
        except RecordWriteError as e:
            self._cannot_write(e)

    async def _batch(self, stage: Stage) -> bool:
        """One batch: N prompts sent together as concurrent requests, or as one batched call."""
        sc = self.scenario
        assert sc.batch is not None
        reqs = [r for r in (next(self._requests, None) for _ in range(sc.batch.size)) if r is not None]
        if not reqs:
            return False
        batch = (f"{sc.name}-batch-{self._units_started:05d}", len(reqs))
        self._units_started += 1
        intended = time.perf_counter_ns()
        if sc.batch.mode == "concurrent":
            await asyncio.gather(*(self._one(r, stage, intended_ns=intended, batch=batch) for r in reqs))
        else:
            await self._batched_call(reqs, stage, batch)
        return len(reqs) == sc.batch.size

    async def _batched_call(
        self, reqs: list[GenerationRequest], stage: Stage, batch: tuple[str, int]
    ) -> None:
        call = getattr(self.backend, "prefill_batch")  # noqa: B009 - checked in run(); not on the protocol
        prompts = [_batch_text(r) for r in reqs]
        ident = self._identity(reqs[0], stage, batch=batch)
        ident = dataclasses.replace(ident, request_id=batch[0], endpoint="prefill_batch")

        async def call_once(m: Measurement) -> None:
            async with asyncio.timeout(self.scenario.timeout.total_s):
                result = await call(prompts)
            usage = Usage(result.prompt_tokens, 0, source="engine")
            native = NativeTimings(source=self.backend.name, prefill_ms=result.prefill_ms)
            m.observe(StreamEnd(time.perf_counter_ns(), usage=usage, native=native, finish_reason="length"))

        await self._measure(ident, call_once, intended_ns=None, keep_text=False)

    def _identity(
        self,
        request: GenerationRequest,
        stage: Stage,
        *,
        chain: tuple[str, int] | None = None,
        batch: tuple[str, int] | None = None,
    ) -> RecordIdentity:
        seq = self._seq
        self._seq += 1
        return RecordIdentity(
            run_id=self.run_id,
            scenario=self.scenario.name,
            request_id=request.request_id,
            seq=seq,
            backend=self.backend.name,
            model=self.backend.model,
            endpoint=request.endpoint,
            stage=stage,
            prompt_id=request.prompt_id,
            requested_output_tokens=request.max_tokens,
            step=chain[1] if chain else None,
            chain_id=chain[0] if chain else request.session_id,
            load_stage=self.load_stage,
            target_rate=self._target_rate,
            batch_id=batch[0] if batch else None,
            batch_size=batch[1] if batch else None,
            requested_prompt_tokens=request.prompt_tokens_target,
        )

    async def _one(
        self,
        request: GenerationRequest,
        stage: Stage,
        *,
        intended_ns: int | None = None,
        chain: tuple[str, int] | None = None,
        batch: tuple[str, int] | None = None,
        keep_text: bool | None = None,
    ) -> RequestRecord | None:
        ident = self._identity(request, stage, chain=chain, batch=batch)
        every = self.scenario.keep_output_every
        keep = keep_text if keep_text is not None else every > 0 and ident.seq % every == 0
        request.want_text = keep  # the runner made this request; the backend may skip decoding text

        async def consume(m: Measurement) -> None:
            await self._consume(request, m)

        return await self._measure(
            ident, consume, intended_ns=intended_ns, keep_text=keep, defer=chain is None
        )

    async def _measure(
        self,
        ident: RecordIdentity,
        body: Callable[[Measurement], Any],
        *,
        intended_ns: int | None,
        keep_text: bool,
        defer: bool = False,
    ) -> RequestRecord | None:
        """Time ``body``; the record is returned, or only queued for the writer task when ``defer``.

        Request starts and ends, and records being written, are where a long loop turn spends its
        time; each lets the arrival probe note bytes that came meanwhile (``agent.transport.probe``).
        """
        ARRIVALS()
        now = time.perf_counter_ns()
        cause = self.cold.begin(now)
        if cause is not None:
            ident = dataclasses.replace(ident, cold_cause=cause)
        m = Measurement(self.start_ns, self._start_unix, intended_ns or now, now, keep_text=keep_text,
                        text_cap=self.scenario.max_output_chars)  # fmt: skip
        failure: tuple[str, str] | None = None
        self.in_flight += 1
        try:
            await body(m)
        except TimeoutError:
            t = self.scenario.timeout
            failure = (
                ("timeout_total", f"no end of stream within {t.total_s} s")
                if m.text_ns
                else ("timeout_first_token", f"no output token within {min(t.first_token_s, t.total_s)} s")
            )
        except RequestFailedError as e:
            failure = (e.reason, redact(e.detail))
        except asyncio.CancelledError:
            self.in_flight -= 1
            self.cold.end(time.perf_counter_ns())
            self._emit(
                m.to_record(ident, failure=("interrupted", "run stopped"), now_ns=time.perf_counter_ns())
            )
            raise
        except Exception as e:
            logger.exception("request raised", request_id=ident.request_id)
            failure = ("client_error", redact(f"{e.__class__.__name__}: {e}"))
        end = time.perf_counter_ns()
        ARRIVALS()
        self.in_flight -= 1
        self.cold.end(end)
        finished = _Finished(m, ident, failure, end)
        if defer:
            self._queue(finished)
            return None
        record = self._write(finished)
        self._backlog_ready.set()  # the writer task flushes the sink
        return record

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

    def _write(self, finished: _Finished) -> RequestRecord:
        """Build a finished request's record and hand it to the sink; the next flush is timed from its end."""
        if self._unflushed_end_ns is None:
            self._unflushed_end_ns = finished.end_ns
        record = finished.record(self.annotator)
        self._emit(record)
        return record

    def _cannot_write(self, error: RecordWriteError) -> None:
        """Records can no longer be written: stop issuing requests (``run`` ends the stage)."""
        if self.outcome.write_error is None:
            logger.info("records cannot be written; stopping the run", error=str(error))
            self.outcome.write_error = error
        self._write_failed.set()

    def _emit(self, record: RequestRecord) -> None:
        if self.outcome.write_error is not None:
            return  # nothing more reaches the file; the run is stopping
        try:
            self.sink.write(record)
        except RecordWriteError as e:
            self._cannot_write(e)
            return
        self.outcome.by_status[record.status] += 1
        if record.reason:
            self.outcome.by_reason[record.reason] += 1
        if self.on_record is not None:
            self.on_record(record)


@dataclass(slots=True)
class _Finished:
    """A finished request waiting for the writer task."""

    measurement: Measurement
    ident: RecordIdentity
    failure: tuple[str, str] | None
    end_ns: int

    def record(self, annotator: Annotator | None = None) -> RequestRecord:
        m = self.measurement
        extra = None
        if annotator is not None:
            end = m.end.t_ns if m.end is not None else self.end_ns
            extra = annotator.request_fields(m.sent_ns, m.text_ns[0] if m.text_ns else None, end)
        return m.to_record(self.ident, failure=self.failure, now_ns=self.end_ns, extra=extra)


async def _until(t_ns: int) -> None:
    """Sleep until ``perf_counter_ns() >= t_ns``, never before.

    Loop timers may fire up to a tick early, so the last millisecond or two is spent yielding to other
    tasks rather than sending ahead of schedule.
    """
    while (delay := t_ns - time.perf_counter_ns()) > 0:  # noqa: ASYNC110 - a deadline, not an event
        await asyncio.sleep(delay / 1e9 - 0.001 if delay > 2_000_000 else 0)


def _sum(values: Iterable[int | None]) -> int | None:
    present = [v for v in values if v is not None]
    return sum(present) if present else None


def _batch_text(request: GenerationRequest) -> str:
    """The text a batched call sends for one request."""
    return request.prompt if request.prompt is not None else _user_text(request)


def _user_text(request: GenerationRequest) -> str:
    return "\n\n".join(m.get("content", "") for m in request.messages or [])
