"""One run's workers placed on the nodes of a Ray cluster (``run --ray ADDRESS``).

Each worker is a Ray actor holding one CPU of a node, spread over the nodes by a placement group. It runs
the same worker loop as a local worker process (``agent.run.workers.work``), in a thread of the actor
with its own event loop, and writes its records to files in a temporary folder of its node. The parent
(this process, the run's driver) asks each actor for news every tick: the messages a local worker would
send through its pipe, and the new whole lines of its records and chains files, which the parent appends
to ``records.w<k>.jsonl`` and ``chains.w<k>.jsonl`` of the run directory here. A node that is lost loses
at most the lines of its last tick; what reached the parent is kept, and the worker is reported dead.

Every node has its own ``perf_counter_ns()``. Before the load, the parent measures each actor's offset
against its own clock (the sample with the shortest round trip of several, as NTP does) and hands the
actor the run's origin and the shared steady start in the actor's clock, so every record's offsets are
on the parent's time line. The offsets and round trips go to the manifest.

``ray`` is an optional dependency (``pip install 'infermeter[ray]'``); it is imported only here, and only
when a run asks for a cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import queue
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent.core.errors import ConfigError
from agent.core.record import RequestRecord
from agent.core.rundir import RunDir
from agent.run.workers import TICK_EVERY_S, Group, WorkerResult, WorkerSpec, event_loop_runner, work

__all__ = ["ClockOffset", "RayCluster", "RayGroup", "clock_offset", "connect"]

#: round trips sampled per actor to measure its clock offset
CLOCK_SAMPLES = 9
#: how long to wait for the cluster to place every worker
PLACE_TIMEOUT_S = 120.0


@dataclass(frozen=True, slots=True)
class ClockOffset:
    """One node's clocks against the parent's: add ``perf_ns`` to a parent reading to get the node's."""

    perf_ns: int
    wall_ns: int
    #: the round trip of the sample the offsets come from; each offset is good to half of it
    rtt_ns: int

    def describe(self) -> dict[str, float]:
        """The manifest's figures, in milliseconds."""
        return {
            "clock_offset_ms": round(self.perf_ns / 1e6, 3),
            "wall_offset_ms": round(self.wall_ns / 1e6, 3),
            "clock_rtt_ms": round(self.rtt_ns / 1e6, 3),
        }


def clock_offset(samples: Sequence[tuple[int, int, int, int, int]]) -> ClockOffset:
    """The offset from round trips ``(sent_ns, sent_wall_ns, node_perf_ns, node_wall_ns, back_ns)``.

    ``sent_ns`` and ``back_ns`` are the parent's ``perf_counter_ns()`` around one call that read the
    node's two clocks; the node read them, at best, half way. The sample with the shortest round trip
    bounds the error tightest, so it is the one taken.
    """
    if not samples:
        raise ValueError("no clock samples")
    sent, sent_wall, perf, wall, back = min(samples, key=lambda s: s[4] - s[0])
    rtt = back - sent
    return ClockOffset(perf - (sent + rtt // 2), wall - (sent_wall + rtt // 2), rtt)


# --- the actor, on a node ------------------------------------------------------------------------------


class RayWorker:
    """One worker on a Ray node: the worker loop in a thread, its files here, news on each ``poll``."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="infermeter-worker-"))
        self.spec = dataclasses.replace(spec, out=self.dir)
        self.outbox: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.deliver: Callable[[tuple[str, Any]], None] | None = None
        self.gone: Callable[[], None] | None = None
        self.stop_asked = False
        self.shipped = {"records": 0, "chains": 0}
        self.thread: threading.Thread | None = None

    def where(self) -> dict[str, Any]:
        """The node this worker runs on, and the infermeter it runs."""
        import ray

        from agent import __version__

        return {
            "node_id": ray.get_runtime_context().get_node_id(),
            "node_ip": ray.util.get_node_ip_address(),
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "version": __version__,
        }

    def clock(self) -> tuple[int, int]:
        """The node's ``perf_counter_ns()`` and ``time_ns()``, read together."""
        return time.perf_counter_ns(), time.time_ns()

    def start(self, origin_ns: int) -> None:
        """Start the load's thread, with the run's origin in this node's clock."""
        spec = dataclasses.replace(self.spec, origin_ns=origin_ns)
        self.thread = threading.Thread(target=self._main, args=(spec,), name="infermeter-load", daemon=True)
        self.thread.start()

    def _main(self, spec: WorkerSpec) -> None:
        try:
            code = event_loop_runner()(work(spec, self, signals=False))
        except Exception as e:  # noqa: BLE001 - whatever ends a worker early is told to the parent, once
            self.outbox.put(("error", f"{e.__class__.__name__}: {e}"))
            code = 1
        self.outbox.put(("exit", code))

    # the worker loop's channel (called in the load's thread)

    def send(self, message: tuple[str, Any]) -> None:
        self.outbox.put(message)

    def listen(self, deliver: Callable[[tuple[str, Any]], None], gone: Callable[[], None]) -> None:
        self.loop, self.deliver, self.gone = asyncio.get_running_loop(), deliver, gone
        if self.stop_asked:
            self.loop.call_soon(gone)

    # what the parent calls

    def tell(self, message: tuple[str, Any]) -> None:
        """One message of the parent to the worker loop."""
        if self.loop is not None and self.deliver is not None:
            self.loop.call_soon_threadsafe(self.deliver, message)

    def stop(self) -> None:
        """Stop the load as a signal stops a worker process (in-flight requests written as interrupted)."""
        self.stop_asked = True
        if self.loop is not None and self.gone is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                self.loop.call_soon_threadsafe(self.gone)

    def poll(self, wait_s: float) -> tuple[list[tuple[str, Any]], bytes, bytes]:
        """The messages since the last poll (waiting up to ``wait_s`` for one), then the files' new lines.

        The lines are read after the messages, so a poll that carries the worker's end carries every
        line it wrote.
        """
        messages = []
        with contextlib.suppress(queue.Empty):
            messages.append(self.outbox.get(timeout=wait_s))
            while True:
                messages.append(self.outbox.get_nowait())
        rundir, k = RunDir(self.dir), self.spec.share.index
        return (
            messages,
            self._new("records", rundir.worker_records(k)),
            self._new("chains", rundir.worker_chains(k)),
        )

    def _new(self, name: str, path: Path) -> bytes:
        """The whole lines of ``path`` past what was shipped."""
        try:
            with path.open("rb") as fh:
                fh.seek(self.shipped[name])
                data = fh.read()
        except OSError:
            return b""
        whole = data[: data.rfind(b"\n") + 1]
        self.shipped[name] += len(whole)
        return whole

    def close(self) -> None:
        """Remove this worker's files (every line is with the parent)."""
        shutil.rmtree(self.dir, ignore_errors=True)


# --- the parent's side ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RayCluster:
    """A cluster the driver is connected to: its address as given, Ray's version, its nodes and CPUs."""

    address: str
    version: str
    nodes: int
    cpus: int
    #: the address of each node that was alive when the driver joined
    node_ips: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        """The manifest's ``cluster``."""
        return {"ray": self.address, "ray_version": self.version, "nodes": self.nodes, "cpus": self.cpus}


def connect(address: str) -> RayCluster:
    """Connect this process to the Ray cluster at ``address`` (``auto``: the one this machine belongs to).

    Every failure is one ``ConfigError`` line: Ray not installed, an address nothing answers at, a
    cluster that refuses the connection.
    """
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "--ray: Ray is not installed here; pip install 'infermeter[ray]' (on every node too)"
        ) from None
    if address != "auto":
        host, _, port = address.rpartition(":")
        host = host.removeprefix("ray://")
        if not host or not port.isdigit():
            raise ConfigError(
                f"--ray {address!r}: give the head's HOST:PORT (its GCS port, 6379 by default) or auto"
            )
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
        except OSError as e:
            raise ConfigError(f"--ray {address}: nothing answers there ({e.strerror or e})") from None
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False, configure_logging=False)
        resources = ray.cluster_resources()
        ips = tuple(str(n.get("NodeManagerAddress", "")) for n in ray.nodes() if n.get("Alive"))
    except Exception as e:  # noqa: BLE001 - Ray's own errors are many; each is told in one line
        raise ConfigError(f"--ray {address}: cannot join the cluster: {_first_line(e)}") from None
    return RayCluster(address, ray.__version__, len(ips), int(resources.get("CPU", 0)), ips)


def _first_line(e: BaseException) -> str:
    """An error in one line (Ray's carry a traceback of the remote side after the first)."""
    return (str(e).strip().splitlines() or [e.__class__.__name__])[0]


def disconnect() -> None:
    """Leave the cluster (the workers' actors end with their driver)."""
    with contextlib.suppress(Exception):
        import ray

        ray.shutdown()


def loopback(url: str | None) -> bool:
    """Whether ``url`` names this machine's loopback, which other nodes cannot reach."""
    host = urlsplit(url or "").hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


class RayGroup(Group):
    """The parent's handle on one stage's workers as Ray actors: placed, clocked, followed, stopped."""

    #: a network between the parent and its workers: the steady start is told further ahead
    RELEASE_AHEAD_NS = 200_000_000

    def __init__(
        self,
        specs: list[WorkerSpec],
        on_counts: Callable[[dict[str, int]], None],
        on_records: Callable[[list[RequestRecord]], None] | None = None,
        *,
        on_placed: Callable[[list[WorkerResult]], None] | None = None,
    ) -> None:
        super().__init__(specs, on_counts, on_records)
        #: called once every worker is placed and clocked (the manifest says where each runs)
        self.on_placed = on_placed
        self._actors: list[Any] = []
        self._offsets: list[ClockOffset] = []
        self._pg: Any = None

    async def run(self, stop: asyncio.Event) -> list[WorkerResult]:
        """Place every worker, clock it, release all at one steady start, follow each to its end."""
        import ray
        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        n = len(self.specs)
        self._pg = placement_group([{"CPU": 1}] * n, strategy="SPREAD")
        followers: list[asyncio.Task[None]] = []
        try:
            try:
                await asyncio.wait_for(self._pg.ready(), PLACE_TIMEOUT_S)
            except TimeoutError:
                cpus = int(ray.available_resources().get("CPU", 0))
                raise ConfigError(
                    f"--ray: the cluster did not place {n} workers of one CPU each within "
                    f"{PLACE_TIMEOUT_S:.0f} s ({cpus} CPUs free); give fewer --workers"
                ) from None
            actor = ray.remote(num_cpus=1, max_concurrency=4, max_restarts=0)(RayWorker)
            self._actors = [
                actor.options(
                    scheduling_strategy=PlacementGroupSchedulingStrategy(
                        self._pg, placement_group_bundle_index=i
                    ),
                    name=f"infermeter-{spec.run_id}-w{spec.share.index}",
                ).remote(spec)
                for i, spec in enumerate(self.specs)
            ]
            try:
                await self._place()
                for i, spec in enumerate(self.specs):
                    await self._actors[i].start.remote(spec.origin_ns + self._offsets[i].perf_ns)
            except ray.exceptions.RayError as e:  # an actor that could not start: a node without infermeter
                raise ConfigError(
                    f"--ray: a worker could not start on the cluster: {_first_line(e)}"
                ) from None
            followers = [asyncio.create_task(self._news(i)) for i in range(n)]
            await self._follow(stop)
        except BaseException:
            self.kill()
            raise
        finally:
            for task in followers:
                task.cancel()
            for a, result in zip(self._actors, self.results, strict=False):
                if not result.died:  # its files are all here: the node's copy goes
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(a.close.remote(), 10)
            with contextlib.suppress(Exception):
                for a in self._actors:
                    ray.kill(a)
                remove_placement_group(self._pg)
        for result, spec in zip(self.results, self.specs, strict=True):
            if result.died:  # what reached the parent is what it wrote
                rundir = RunDir(spec.out)
                with contextlib.suppress(OSError):
                    result.written = rundir.worker_records(spec.share.index).read_bytes().count(b"\n")
        return self.results

    async def _place(self) -> None:
        """Where each worker runs, and its node's clock offset; refuse a node with another infermeter."""
        from agent import __version__

        for i, a in enumerate(self._actors):
            where = await a.where.remote()
            if where["version"] != __version__:
                raise ConfigError(
                    f"--ray: node {where['hostname']} runs infermeter {where['version']}, this one "
                    f"{__version__}; install the same release on every node"
                )
            samples = []
            for _ in range(CLOCK_SAMPLES):
                sent, sent_wall = time.perf_counter_ns(), time.time_ns()
                perf, wall = await a.clock.remote()
                samples.append((sent, sent_wall, perf, wall, time.perf_counter_ns()))
            offset = clock_offset(samples)
            self._offsets.append(offset)
            r = self.results[i]
            r.pid = where["pid"]
            r.placement = {k: where[k] for k in ("node_id", "node_ip", "hostname")} | offset.describe()
        if self.on_placed is not None:
            self.on_placed(self.results)

    async def _news(self, i: int) -> None:
        """Follow worker ``i``: its messages folded in, its lines appended here, until it ends or is lost."""
        import ray

        spec, result = self.specs[i], self.results[i]
        rundir, k = RunDir(spec.out), spec.share.index
        records, chains = rundir.worker_records(k), rundir.worker_chains(k)
        records.touch()
        try:
            while True:
                try:
                    messages, lines, chain_lines = await self._actors[i].poll.remote(TICK_EVERY_S)
                except ray.exceptions.RayError as e:
                    result.error = result.error or _first_line(e)
                    return
                for path, data in ((records, lines), (chains, chain_lines)):
                    if data:
                        with path.open("ab") as fh:
                            fh.write(data)
                ended = False
                for kind, value in messages:
                    if kind == "exit":
                        result.exit_code, ended = value, True
                    else:
                        self._handle(i, kind, value)
                self.on_counts(self._total())
                if ended:
                    return
        finally:
            self._end(i)

    def _go(self, i: int, start_ns: int) -> None:
        self._actors[i].tell.remote(("go", start_ns + self._offsets[i].perf_ns))

    def terminate(self) -> None:
        """Ask every worker to stop, as a signal stops a worker process."""
        for a in self._actors:
            with contextlib.suppress(Exception):
                a.stop.remote()

    def kill(self) -> None:
        """End every worker's actor now (what its node had not sent is lost)."""
        import ray

        for a in self._actors:
            with contextlib.suppress(Exception):
                ray.kill(a)
