"""One run's load spread over worker processes, each with its own event loop (``run --workers N``).

The parent starts the backend as usual (a simulator, an embedded engine, or nothing for a remote server)
and each worker drives it as a client through its URL. The one seeded schedule is split exactly: worker
``k`` of ``n`` takes requests ``k, k + n, k + 2n, ...`` of the workload and, in an open loop, the arrival
times of the same indices from one shared start; a closed loop's clients are split the same way. Each
worker writes its own records file in the run directory (``records.w<k>.jsonl``, flushed as the
single-process writer flushes), and tells the parent its counts for the one progress bar; the parent
writes the manifest and the summary over every file. A stop signal reaches every worker; a worker that
dies is reported, and the records it wrote are kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol

from agent.core.errors import ConfigError, RecordWriteError
from agent.core.record import ChainRecord, RequestRecord
from agent.core.rundir import RunDir
from agent.core.scenario import MAX_IN_FLIGHT, Scenario
from agent.run.shapes import shape, shape_name
from agent.run.shapes.base import Share
from agent.run.writer import RunOutcome

__all__ = ["Share", "WorkerPlan", "WorkerSpec", "auto_workers", "check_splittable", "split", "worker_main"]

#: How often a worker tells the parent its counts (the progress bar's pace).
TICK_EVERY_S = 0.2
#: How long the workers have to start (interpreter, modules, backend client) before the run fails.
START_TIMEOUT_S = 120.0
#: How long a worker may take to stop after SIGTERM before it is killed.
STOP_GRACE_S = 30.0


def auto_workers() -> int:
    """One worker per core this process may use, less one for the parent, at least one."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


def check_splittable(sc: Scenario, workers: int) -> None:
    """Refuse, in one line, a scenario whose load cannot be split across ``workers`` processes."""
    if not sc.load.open_loop and sc.concurrency < workers:
        raise ConfigError(
            f"--workers {workers}: a closed loop of {sc.concurrency} clients gives each worker at least one; "
            f"give --concurrency {workers} or more, or fewer workers"
        )


def split(sc: Scenario, share: Share) -> Scenario:
    """The scenario one worker runs: its share of the units of work, warmup, cooldown and clients.

    A unit (a request, an agent chain, a batch, a conversation) runs whole in the worker that starts it.
    The copy keeps the scenario's made prompts; the requests themselves are chosen by index in the runner.
    """
    update: dict[str, Any] = {"warmup": share.of(sc.warmup), "cooldown": share.of(sc.cooldown)}
    if sc.requests is not None:
        load = shape(shape_name(sc))
        update["requests"] = share.of(load.units(sc, sc.requests)) * load.size(sc)
    if not sc.load.open_loop:
        update["concurrency"] = share.of(sc.concurrency)
    else:
        cap = sc.load.max_concurrency or MAX_IN_FLIGHT
        update["load"] = sc.load.model_copy(update={"max_concurrency": max(1, -(-cap // share.count))})
    return sc.model_copy(update=update)


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    """How a run is spread: the worker count, and how each worker makes its client of the backend."""

    count: int
    backend: str
    #: the backend's arguments; each worker's client adds the started backend's ``base_url``
    args: dict[str, Any]
    #: the Ray cluster the workers are placed on (``agent.run.cluster.RayCluster``; None: this machine)
    ray: Any = None


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """Everything one worker process needs, sent to it at its start."""

    share: Share
    scenario: Scenario
    backend: str
    args: dict[str, Any]
    run_id: str
    out: Path
    origin_ns: int
    load_stage: str | None
    #: send each finished record to the parent, which serves the run's one ``/metrics``
    forward: bool = False


@dataclass(slots=True)
class WorkerResult:
    """What the parent knows of one worker when it ends."""

    index: int
    pid: int | None = None
    exit_code: int | None = None
    outcome: RunOutcome | None = None
    written: int = 0
    error: str | None = None
    counts: dict[str, int] = field(default_factory=lambda: {"ok": 0, "degraded": 0})
    #: where a worker on a cluster runs: its node, and that node's clock against the parent's
    placement: dict[str, Any] = field(default_factory=dict)

    @property
    def died(self) -> bool:
        """Whether the worker ended without reporting its outcome."""
        return self.outcome is None

    def describe(self) -> dict[str, Any]:
        """The worker's line in the manifest."""
        out: dict[str, Any] = {
            "index": self.index,
            "pid": self.pid,
            "status": "died" if self.died else "completed",
            "records": self.written,
        }
        out.update(self.placement)
        if self.exit_code:
            out["exit_code"] = self.exit_code
        if self.error:
            out["error"] = self.error
        return out


def _lines(path: Path) -> int:
    """Whole lines in ``path`` (0 when it was never made)."""
    try:
        with path.open("rb") as fh:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
    except OSError:
        return 0


# --- the worker process ------------------------------------------------------------------------------


class Channel(Protocol):
    """How a worker talks with the parent: messages out, and the parent's messages delivered in."""

    def send(self, message: tuple[str, Any]) -> None:
        """One message to the parent (counts, records, readiness, the outcome)."""

    def listen(self, deliver: Callable[[tuple[str, Any]], None], gone: Callable[[], None]) -> None:
        """From now on each message of the parent to ``deliver``, on the running loop; ``gone`` at its end."""


class _Pipe:
    """A worker process's end of its pipe to the parent."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def send(self, message: tuple[str, Any]) -> None:
        self.conn.send(message)

    def listen(self, deliver: Callable[[tuple[str, Any]], None], gone: Callable[[], None]) -> None:
        loop, fd = asyncio.get_running_loop(), self.conn.fileno()

        def receive() -> None:
            try:
                deliver(self.conn.recv())
            except (EOFError, OSError):  # the parent is gone: stop
                loop.remove_reader(fd)
                gone()

        loop.add_reader(fd, receive)
        # the loop made the pipe non-blocking; a tick bigger than the pipe holds is written whole
        os.set_blocking(fd, True)


def event_loop_runner() -> Callable[[Coroutine[Any, Any, int]], int]:
    """The event loop runner: uvloop's where it is installed, else asyncio's."""
    try:
        import uvloop

        return uvloop.run
    except ImportError:
        return asyncio.run


def worker_main(spec: WorkerSpec, conn: Connection) -> None:
    """The worker process: its backend client, its runner, its records file; the outcome to ``conn``."""
    try:
        code = event_loop_runner()(work(spec, _Pipe(conn)))
    except Exception as e:  # noqa: BLE001 - whatever ends a worker early is told to the parent, once
        with contextlib.suppress(OSError):
            conn.send(("error", f"{e.__class__.__name__}: {e}"))
        code = 1
    conn.close()
    raise SystemExit(code)


class _Link:
    """A worker's side of its channel: the parent's messages in; counts, records and the outcome out."""

    def __init__(self, spec: WorkerSpec, channel: Channel, stop: asyncio.Event) -> None:
        self.spec, self.channel, self.stop = spec, channel, stop
        self.inbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.counts = {"ok": 0, "degraded": 0}
        self.finished: list[RequestRecord] = []  # not yet sent (only when the parent serves /metrics)
        self.in_flight: Callable[[], int] = lambda: 0
        channel.listen(self.inbox.put_nowait, stop.set)

    def record(self, record: RequestRecord) -> None:
        """One finished record: counted, and kept for the parent's ``/metrics`` when it serves one."""
        self.counts[record.status] += 1
        if self.spec.forward:
            self.finished.append(record)

    def tick(self) -> None:
        """The counts, the requests in flight and the records finished since the last tick, to the parent."""
        self.channel.send(("tick", (dict(self.counts), self.in_flight(), self.finished[:])))
        self.finished.clear()

    async def ticking(self) -> None:
        while True:
            await asyncio.sleep(TICK_EVERY_S)
            self.tick()

    async def gate(self) -> int:
        """Tell the parent this worker is warm; the shared steady start it answers with."""
        self.tick()  # the warmup's records first
        self.channel.send(("ready", dict(self.counts)))
        while True:
            kind, value = await self.inbox.get()
            if kind == "go":
                return int(value)

    def done(self, outcome: RunOutcome, written: int) -> None:
        """The last records, nothing in flight, then the outcome."""
        self.in_flight = lambda: 0
        self.tick()
        e = outcome.write_error
        outcome.write_error = None  # sent as its parts: an exception with its own arguments does not unpickle
        failure = (str(e.path), e.errno, e.strerror) if e is not None else None
        self.channel.send(("done", (outcome, written, dict(self.counts), failure)))


async def work(spec: WorkerSpec, channel: Channel, *, signals: bool = True) -> int:
    """One worker's load: its backend client, its runner and its records files under ``spec.out``.

    ``signals``: SIGINT and SIGTERM stop it (a process's main thread only; a thread is stopped through
    its channel).
    """
    from agent.backends import create
    from agent.run.runner import RunContext, Runner
    from exporters.jsonl import JsonlWriter

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    if signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    link = _Link(spec, channel, stop)
    backend = create(spec.backend, spec.args)
    await backend.start()
    ticker: asyncio.Task[None] | None = None
    rundir, k = RunDir(spec.out), spec.share.index
    try:
        with JsonlWriter(rundir.worker_records(k)) as writer, JsonlWriter(rundir.worker_chains(k)) as chains:

            def write_chain(record: ChainRecord) -> None:
                chains.write(record)
                chains.flush()  # one per chain, as one process writes them: a killed worker keeps each

            context = RunContext(
                spec.run_id,
                origin_ns=spec.origin_ns,
                on_record=link.record,
                steady_gate=link.gate,
                chain_sink=write_chain,
            )
            runner = Runner(
                spec.scenario, backend, writer, context, load_stage=spec.load_stage, share=spec.share
            )
            link.in_flight = lambda: runner.in_flight
            ticker = asyncio.create_task(link.ticking())
            outcome = await runner.run(stop)
        if chains.count == 0:
            rundir.worker_chains(k).unlink(missing_ok=True)
    finally:
        if ticker is not None:
            ticker.cancel()
        await backend.close()
    link.done(outcome, writer.count)
    return 0


# --- the parent's side -------------------------------------------------------------------------------


class Group:
    """What the parent knows of one stage's workers wherever they run: their messages, counts, outcomes.

    A subclass starts the workers and carries messages (``WorkerGroup``: processes on this machine; the
    Ray group in ``agent.run.cluster``: actors on a cluster's nodes); this class folds the messages in,
    releases every worker at one steady start, and waits for them all.
    """

    #: how long before the shared steady start the workers are told it
    RELEASE_AHEAD_NS = 20_000_000

    def __init__(
        self,
        specs: list[WorkerSpec],
        on_counts: Callable[[dict[str, int]], None],
        on_records: Callable[[list[RequestRecord]], None] | None = None,
    ) -> None:
        self.specs = specs
        self.on_counts = on_counts
        #: the workers' finished records, as they come (when the parent serves ``/metrics``)
        self.on_records = on_records
        #: each worker's requests in flight at its last tick
        self.in_flight = [0] * len(specs)
        #: the ``perf_counter_ns()`` every worker's measured stage starts at, once they are released
        self.steady_start_ns: int | None = None
        self.results = [WorkerResult(s.share.index) for s in specs]
        self._ready: set[int] = set()
        self._ready_event = asyncio.Event()
        self._ended = [asyncio.Event() for _ in specs]
        self._any_ended = asyncio.Event()

    def _total(self) -> dict[str, int]:
        return {k: sum(r.counts[k] for r in self.results) for k in ("ok", "degraded")}

    def _handle(self, i: int, kind: str, value: Any) -> None:
        """One message of worker ``i``."""
        result = self.results[i]
        if kind == "tick":
            result.counts, self.in_flight[i], records = value
            if records and self.on_records is not None:
                self.on_records(records)
        elif kind == "ready":
            result.counts = value
            self._ready.add(i)
            if len(self._ready) == len(self.specs):
                self._ready_event.set()
        elif kind == "done":
            result.outcome, result.written, result.counts, failure = value
            if failure is not None and result.outcome is not None:
                path, errno, strerror = failure
                result.outcome.write_error = RecordWriteError(path, OSError(errno, strerror))
                result.error = str(result.outcome.write_error)
        elif kind == "error":
            result.error = value

    def _end(self, i: int) -> None:
        """Worker ``i`` is gone (its outcome told or not)."""
        self._ended[i].set()
        self._any_ended.set()

    def _go(self, i: int, start_ns: int) -> None:
        """Tell worker ``i`` the steady start (``perf_counter_ns()`` of this process)."""
        raise NotImplementedError

    def terminate(self) -> None:
        """Ask every worker still running to stop (each writes its in-flight requests as interrupted)."""
        raise NotImplementedError

    def kill(self) -> None:
        """End every worker still running, now."""
        raise NotImplementedError

    async def _follow(self, stop: asyncio.Event) -> None:
        """Release the workers, then wait for all of them; ``stop`` stops them all."""
        await self._release(stop)
        stopper = asyncio.create_task(stop.wait())
        ended = asyncio.create_task(self._all_ended())
        await asyncio.wait({stopper, ended}, return_when=asyncio.FIRST_COMPLETED)
        if not ended.done():
            self.terminate()
            try:
                await asyncio.wait_for(ended, STOP_GRACE_S)
            except TimeoutError:
                self.kill()
                await ended
        stopper.cancel()

    async def _release(self, stop: asyncio.Event) -> None:
        """Wait until every worker is warm (or one ended, or a stop), then send one steady start to all."""
        ready = asyncio.create_task(self._ready_event.wait())
        stopped = asyncio.create_task(stop.wait())
        any_ended = asyncio.create_task(self._any_ended.wait())
        done, _ = await asyncio.wait(
            {ready, stopped, any_ended}, timeout=START_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
        )
        for t in (ready, stopped, any_ended):
            t.cancel()
        if ready not in done and not done:
            self.terminate()
            raise ConfigError(f"the workers did not start within {START_TIMEOUT_S:.0f} s")
        if ready not in done:
            self.terminate()  # a worker that died before the load, or a stop: the others do not start
            return
        start = time.perf_counter_ns() + self.RELEASE_AHEAD_NS  # every worker has the message well before it
        self.steady_start_ns = start
        for i in range(len(self.specs)):
            self._go(i, start)

    async def _all_ended(self) -> None:
        for e in self._ended:
            await e.wait()


class WorkerGroup(Group):
    """The parent's handle on one stage's worker processes on this machine."""

    def __init__(
        self,
        specs: list[WorkerSpec],
        on_counts: Callable[[dict[str, int]], None],
        on_records: Callable[[list[RequestRecord]], None] | None = None,
    ) -> None:
        super().__init__(specs, on_counts, on_records)
        self._ctx = multiprocessing.get_context("spawn")
        self._procs: list[Any] = []
        self._conns: list[Connection] = []

    def _on_message(self, i: int) -> None:
        conn = self._conns[i]
        try:
            while conn.poll():
                kind, value = conn.recv()
                self._handle(i, kind, value)
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(conn.fileno())
            self._end(i)
        self.on_counts(self._total())

    async def run(self, stop: asyncio.Event) -> list[WorkerResult]:
        """Start every worker, release them at one steady start, wait for all; ``stop`` stops them all."""
        loop = asyncio.get_running_loop()
        for i, spec in enumerate(self.specs):
            parent, child = self._ctx.Pipe()
            proc = self._ctx.Process(target=worker_main, args=(spec, child), name=f"infermeter-worker-{i}")
            proc.start()
            child.close()
            self._procs.append(proc)
            self._conns.append(parent)
            self.results[i].pid = proc.pid
            loop.add_reader(parent.fileno(), self._on_message, i)
            os.set_blocking(parent.fileno(), True)  # a message whose start is in is read whole
        try:
            await self._follow(stop)
        except BaseException:
            self.kill()
            raise
        finally:
            for conn in self._conns:
                with contextlib.suppress(ValueError, OSError):
                    loop.remove_reader(conn.fileno())
        for proc, result, spec in zip(self._procs, self.results, self.specs, strict=True):
            await asyncio.to_thread(proc.join)
            result.exit_code = proc.exitcode
            if result.died:  # what reached its file is what it wrote
                result.written = _lines(RunDir(spec.out).worker_records(spec.share.index))
        return self.results

    def _go(self, i: int, start_ns: int) -> None:
        with contextlib.suppress(OSError):
            self._conns[i].send(("go", start_ns))

    def terminate(self) -> None:
        """SIGTERM to every worker still running (each writes its in-flight requests as interrupted)."""
        for proc in self._procs:
            if proc.is_alive():
                with contextlib.suppress(OSError):
                    proc.terminate()

    def kill(self) -> None:
        """SIGKILL to every worker still running."""
        for proc in self._procs:
            if proc.is_alive():
                with contextlib.suppress(OSError):
                    proc.kill()
