"""The record writer: finished requests become records off the hot path, and reach the sink in bounded time.

A request's task only queues its measurement (``queue``); the writer's task (``loop``) builds queued
records in slices of at most ``WRITE_SLICE_NS``, so a burst of requests ending together never holds up
the timestamps of streams still reading. Two bounds keep what a killed run can lose small under any
load: the writer's turn goes on until few records wait and none waited long, and a request that ends
with too many waiting writes them itself before its worker goes on (back-pressure).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from agent.core.errors import RecordWriteError
from agent.core.record import ChainRecord, Measurement, RecordIdentity, RequestRecord

__all__ = [
    "BACKLOG_AGE_NS",
    "BACKLOG_KEEP",
    "BACKLOG_LATE_NS",
    "BACKLOG_LIMIT",
    "WRITE_SLICE_NS",
    "Annotator",
    "Finished",
    "RecordSink",
    "RecordWriter",
    "RunOutcome",
    "wait_ready",
]

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


class Annotator(Protocol):
    """Adds fields measured outside the stream to a finished request's record (the energy meter)."""

    #: how long the writer may hold a record waiting for ``ready``
    max_wait_s: float

    def ready(self, end_ns: int) -> bool:
        """Whether everything needed to annotate a request that ended at ``end_ns`` has arrived."""

    def request_fields(self, sent_ns: int, first_ns: int | None, end_ns: int) -> dict[str, object]:
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

    A sink that buffers also has ``flush()``; the writer calls it after each batch of records it writes.
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
class Finished:
    """A finished request waiting for the writer."""

    measurement: Measurement
    ident: RecordIdentity
    failure: tuple[str, str] | None
    end_ns: int

    def record(self, annotator: Annotator | None = None) -> RequestRecord:
        """The request's record, with the annotator's fields where there is one."""
        m = self.measurement
        extra = None
        if annotator is not None:
            end = m.end.t_ns if m.end is not None else self.end_ns
            extra = annotator.request_fields(m.sent_ns, m.text_ns[0] if m.text_ns else None, end)
        return m.to_record(self.ident, failure=self.failure, now_ns=self.end_ns, extra=extra)


class RecordWriter:
    """Builds records from finished requests and hands them to the sink, counting them in ``outcome``.

    When the sink fails, nothing more is written and ``failed`` is set: the runner stops the run.
    """

    def __init__(
        self,
        sink: RecordSink,
        outcome: RunOutcome,
        *,
        annotator: Annotator | None = None,
        on_record: Callable[[RequestRecord], None] | None = None,
        chain_sink: Callable[[ChainRecord], None] | None = None,
        probe: Callable[[], None] = lambda: None,
    ) -> None:
        self.sink = sink
        #: the backend's arrival probe, called after each record written (a long loop turn's steps)
        self.probe = probe
        self.outcome = outcome
        self.annotator = annotator
        self.on_record = on_record
        self.chain_sink = chain_sink
        self.failed = asyncio.Event()
        self._backlog: deque[Finished] = deque()
        self._ready = asyncio.Event()
        #: end of the oldest request whose record was written but not yet flushed
        self._unflushed_end_ns: int | None = None

    async def loop(self) -> None:
        """Build and write queued records, flushing the sink after each turn, until cancelled.

        A turn ends after ``WRITE_SLICE_NS`` so records built together never hold up the loop for
        long (streams still reading keep being read on time), but only once the writer has caught up:
        at most ``BACKLOG_KEEP`` records wait, none older than ``BACKLOG_AGE_NS``. A saturated loop
        runs few turns, so each must write what came since the last one.
        """
        backlog = self._backlog
        while True:
            await self._ready.wait()
            self._ready.clear()
            while True:
                waiting = self._turn()
                if not backlog:
                    break
                if waiting:
                    assert self.annotator is not None
                    await wait_ready(self.annotator, backlog[0].end_ns)  # then written, ready or not
                    self.write(backlog.popleft())
                else:
                    await asyncio.sleep(0)

    def _turn(self) -> bool:
        """Write one slice of the backlog and flush; True when it stopped to wait for the annotator."""
        backlog = self._backlog
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
            self.write(backlog.popleft())
            self.probe()
        self.flush()
        return waiting

    def _behind(self, now_ns: int) -> bool:
        """Whether the (non-empty) backlog holds too many records, or its oldest waited too long."""
        return len(self._backlog) > BACKLOG_KEEP or now_ns - self._backlog[0].end_ns > BACKLOG_AGE_NS

    def queue(self, finished: Finished) -> None:
        """Queue a finished request for the writer's task; when that task is starved, catch up first."""
        backlog = self._backlog
        end = finished.end_ns
        if backlog and (len(backlog) >= BACKLOG_LIMIT or end - backlog[0].end_ns > BACKLOG_LATE_NS):
            self._catch_up(end)  # this worker pays before going on
        backlog.append(finished)
        self.outcome.backlog_max = max(self.outcome.backlog_max, len(backlog))
        self._ready.set()

    def wake(self) -> None:
        """Have the writer's task flush the sink soon (after a record written outside the backlog)."""
        self._ready.set()

    def _catch_up(self, now_ns: int) -> None:
        """Write queued records until the writer's own turn would stop (few and recent), then flush."""
        backlog = self._backlog
        while backlog and self._behind(now_ns):
            self.write(backlog.popleft())
            self.probe()
        self.flush()

    def drain(self) -> None:
        """Write everything still queued and flush (the run is ending)."""
        while self._backlog:
            self.write(self._backlog.popleft())
        self.flush()

    def flush(self) -> None:
        """Flush the sink (where it buffers) and note how long the oldest unflushed record waited."""
        flush = getattr(self.sink, "flush", None)
        if flush is not None and self.outcome.write_error is None:
            try:
                flush()
            except RecordWriteError as e:
                self.cannot_write(e)
        if self._unflushed_end_ns is not None:
            delay = (time.perf_counter_ns() - self._unflushed_end_ns) / 1e6
            self.outcome.write_delay_ms_max = max(self.outcome.write_delay_ms_max, delay)
            self._unflushed_end_ns = None

    def write(self, finished: Finished) -> RequestRecord:
        """Build a finished request's record and hand it to the sink; the next flush is timed from its end."""
        if self._unflushed_end_ns is None:
            self._unflushed_end_ns = finished.end_ns
        record = finished.record(self.annotator)
        self.emit(record)
        return record

    def emit(self, record: RequestRecord) -> None:
        """Hand a built record to the sink and count it; nothing once writing has failed."""
        if self.outcome.write_error is not None:
            return  # nothing more reaches the file; the run is stopping
        try:
            self.sink.write(record)
        except RecordWriteError as e:
            self.cannot_write(e)
            return
        self.outcome.by_status[record.status] += 1
        if record.reason:
            self.outcome.by_reason[record.reason] += 1
        if self.on_record is not None:
            self.on_record(record)

    def emit_chain(self, chain: ChainRecord) -> None:
        """Count a finished agent chain and hand its record to the chain sink, where there is one."""
        self.outcome.chains[chain.status] += 1
        if self.chain_sink is None or self.outcome.write_error is not None:
            return
        try:
            self.chain_sink(chain)
        except RecordWriteError as e:
            self.cannot_write(e)

    def cannot_write(self, error: RecordWriteError) -> None:
        """Records can no longer be written: stop issuing requests (the runner ends the stage)."""
        if self.outcome.write_error is None:
            logger.info("records cannot be written; stopping the run", error=str(error))
            self.outcome.write_error = error
        self.failed.set()
