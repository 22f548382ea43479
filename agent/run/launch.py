"""Carry out a run: start the backend, run its stages (each one or more tenants at once), write files.

``run``, ``sweep`` and ``replay`` all come through here: a plain run is one stage with one tenant, a
multi-tenant run one stage with several, a sweep one stage per load level (stopped early at saturation),
a replay one stage whose tenant carries the trace's requests and clock.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from rich.console import Console

from agent.backends.base import Backend
from agent.backends.capabilities import Warming
from agent.core.errors import InfermeterError, RecordWriteError
from agent.core.files import release_headroom
from agent.core.manifest import BackendFacts, Manifest, ManifestFile
from agent.core.record import ChainRecord, GenerationRequest, RequestRecord
from agent.core.rundir import RunDir
from agent.run.cluster import RayGroup, disconnect, loopback
from agent.run.collaborators import EnergyWatch, Gauges, ProgressBar, RunProgress, StopSignals
from agent.run.profiles import Profile, StagePlan, Tenant
from agent.run.prompts import prepare_workloads
from agent.run.runner import ColdTracker, RunContext, Runner, request_shapes
from agent.run.serverside import ServerSide
from agent.run.shapes.base import Share
from agent.run.workers import WorkerGroup, WorkerPlan, WorkerResult, WorkerSpec, split
from agent.run.writer import RunOutcome
from exporters.jsonl import JsonlWriter

__all__ = ["Launch", "LaunchResult"]

logger = structlog.get_logger(__name__)


@dataclass(slots=True)
class LaunchResult:
    """What the run did, for the summary and the manifest."""

    outcome: RunOutcome
    stages_run: list[StagePlan] = field(default_factory=list)
    stopped_early: str | None = None
    signal: int | None = None
    origin_ns: int = 0
    #: records stopped reaching the disk, which ended the run
    write_error: RecordWriteError | None = None
    #: request records that reached the operating system
    written: int = 0


class Launch:
    """One run directory, one backend, a list of stages."""

    def __init__(
        self,
        backend: Backend,
        out: Path,
        manifest: ManifestFile,
        *,
        run_id: str,
        err: Console,
        progress: RunProgress | None = None,
        signals: StopSignals | None = None,
        gauges: Gauges | None = None,
        energy: EnergyWatch | None = None,
        server: ServerSide | None = None,
        workers: WorkerPlan | None = None,
    ) -> None:
        self.backend = backend
        #: worker processes that share the load (None: this process runs it)
        self.workers = (
            workers if workers is not None and (workers.count > 1 or workers.ray is not None) else None
        )
        self.out = out
        self.manifest_file = manifest
        self.run_id = run_id
        self.err = err
        self.progress = progress or RunProgress(err)
        self.signals = signals or StopSignals()
        self.gauges = gauges
        self.energy = energy
        self.server = server
        #: live state for ``/status`` while the run lasts
        self.counts = {"ok": 0, "degraded": 0}
        self.stage: str | None = None
        self.expected: int | None = None
        self._runners: list[Runner] = []
        #: a worker process ended without its outcome (its records on disk are kept)
        self.worker_died = False
        #: records the worker processes wrote to their own files
        self.worker_written = 0
        #: when the current stage's load ended (None while it runs): GPU energy after it is not the load's
        self._load_end_ns: int | None = None
        self._started = time.time()
        #: from the moment the run directory exists each stop signal ends the load (``StopSignals``)
        self.signals.install()
        self.received = self.signals.received
        self._stop = self.signals.event
        if gauges is not None:
            gauges.status_from(self.status)

    def release_signals(self) -> None:
        """Stop signals act as usual again (the run's files are written)."""
        self.signals.release()

    @property
    def manifest(self) -> Manifest:
        """The run's manifest, as far as it is known; ``_save_manifest`` writes it."""
        return self.manifest_file.manifest

    def _save_manifest(self) -> None:
        self.manifest_file.save()

    def _backend_facts(self) -> None:
        self.manifest.backend = BackendFacts.model_validate(self.backend.describe())

    async def start_backend(self) -> None:
        """Start the backend; on failure record it in the manifest and say why."""
        try:
            with self.err.status(f"starting backend '{self.backend.name}'"):
                await self.backend.start()
        except InfermeterError as e:
            await self.backend.close()
            self.fail(str(e))
            raise
        self._backend_facts()
        self._save_manifest()

    async def run(
        self,
        profile: Profile,
    ) -> LaunchResult:
        """Run the profile's stages in order (it may stop early); close the backend."""
        stop, received = self._stop, self.received
        try:
            if self.gauges is not None:
                self.manifest.metrics_url = await self.gauges.serve()
            await self.start_backend()
            try:
                await self._make_prompts(profile.planned())
                if profile.planned():
                    await profile.prepare(self.backend)
                else:  # its stages are made now, from the started backend (a replay's requests)
                    with self.err.status("preparing requests"):
                        await profile.prepare(self.backend)
                await self._warm(profile.planned())
                await self._start_server()
                await self._start_energy()
                try:
                    result = await self._stages(profile, stop, received)
                finally:
                    self._finish_energy()
                    self._finish_server()
            finally:
                await self.backend.close()
                if self.workers is not None and self.workers.ray is not None:
                    disconnect()
            if self.gauges is not None:
                await self.gauges.linger(stop)
            return result
        except BaseException as e:  # whatever ends the run here, the manifest says so before it goes on
            self.fail(str(e) or e.__class__.__name__)
            raise
        finally:
            if self.gauges is not None:
                await self.gauges.close()

    async def _make_prompts(self, stages: list[StagePlan]) -> None:
        """Every workload's prompts made with the server's tokenizer before the clock; facts to manifest."""
        scenarios = [t.scenario for plan in stages for t in plan.tenants if t.scenario.workload is not None]
        if not scenarios:
            return
        with self.err.status("making the workload's prompts with the server's tokenizer"):
            facts = await prepare_workloads(scenarios, self.backend)
        self.manifest.workload = facts
        for name, f in facts.items():
            exact = f" ({f['exact']} exact)" if "exact" in f else ""
            self.err.print(
                f"{name}: {f['prompts']} prompts made in {f['made_s']:.1f} s, lengths from the "
                f"{f['lengths']}{exact}"
            )
        self._save_manifest()

    async def _warm(self, stages: list[StagePlan]) -> None:
        """Let a backend that compiles do so for every request shape before the clock starts.

        What it took goes to the manifest and to the console, apart from every request's timings.
        """
        if not isinstance(self.backend, Warming):
            return
        requests: list[GenerationRequest] = []
        batches: dict[tuple[str, ...], list[str]] = {}  # a sweep's stages repeat the same batches
        for tenant in (t for plan in stages for t in plan.tenants):
            singles, batched = request_shapes(tenant.scenario, tenant.requests)
            requests += singles
            batches.update((tuple(b), b) for b in batched)
        with self.err.status("compiling and warming every request shape before the clock starts"):
            facts = await self.backend.warm(requests, list(batches.values()))
        if facts is not None:
            self.err.print(facts.line())
            self._backend_facts()
            self._save_manifest()

    def status(self) -> dict[str, object]:
        """The ``/status`` document of a run while it lasts: what runs, how far it got, what is in flight."""
        return {
            "run_id": self.run_id,
            "out": str(self.out),
            "status": self.manifest.status,
            "backend": self.backend.name,
            "model": self.backend.model,
            "scenarios": sorted({r.scenario.name for r in self._runners}),
            "stage": self.stage,
            "elapsed_s": round(time.time() - self._started, 1),
            "records": {**self.counts, "expected": self.expected},
            "in_flight": sum(r.in_flight for r in self._runners),
        }

    def fail(self, why: str) -> None:
        """Mark the run failed in its manifest (once), as far as the disk still lets us."""
        m = self.manifest
        if m.status != "running":
            return
        m.status, m.error, m.ended_at = "failed", why, time.strftime("%Y-%m-%dT%H:%M:%S%z")
        try:
            self._save_manifest()
        except OSError as e:
            logger.error("manifest could not be updated", error=str(e))
        finally:
            release_headroom(self.out)

    async def _stages(self, profile: Profile, stop: asyncio.Event, received: list[int]) -> LaunchResult:
        stages = profile.planned()
        expected = [t.expected() for st in stages for t in st.tenants]
        total = None if any(e is None for e in expected) else sum(e or 0 for e in expected)
        self.expected = total
        origin = time.perf_counter_ns()
        cold = ColdTracker(stages[0].tenants[0].scenario.load.idle_gap)
        result = LaunchResult(RunOutcome(started_unix=time.time()), origin_ns=origin)
        with (
            self.progress.bar(stages[0].tenants[0].scenario.name, total, self.counts) as bar,
            JsonlWriter(RunDir(self.out).records) as writer,
            JsonlWriter(RunDir(self.out).chains) as chains,
        ):
            plan = profile.next(None, [])
            while plan is not None:
                shared = _Shared(writer, chains, bar, cold, origin, keep=profile.reads_records)
                outcomes, records = await self._stage(plan, stop, shared)
                result.stages_run.append(plan)
                if _stopped(result, outcomes, received):
                    break
                plan = profile.next(plan, records)
            result.stopped_early = profile.stopped_early
        if chains.count == 0:
            RunDir(self.out).chains.unlink(missing_ok=True)
        result.written = writer.count + self.worker_written
        self._backend_facts()  # counters such as compile evidence grew
        self._publish_compile(self._runners)
        return result

    async def _stage(
        self, plan: StagePlan, stop: asyncio.Event, shared: _Shared
    ) -> tuple[list[RunOutcome], list[RequestRecord]]:
        """One stage: its tenants' runners at once; their outcomes, and its records when kept."""
        stage_records: list[RequestRecord] = []
        gauges = self.gauges

        def tick(record: RequestRecord) -> None:
            self.counts[record.status] += 1
            if gauges is not None:
                gauges.observe(record)
            if shared.keep:
                stage_records.append(record)
            shared.bar.tick()

        self.stage = plan.label or "steady"
        if plan.label:
            shared.bar.describe(plan.label)
        runners = [
            self._runner(t, plan.label, shared.writer, shared.chains, tick, shared.cold, shared.origin)
            for t in plan.tenants
        ]
        self._runners, self._load_end_ns = runners, None
        if gauges is not None:
            gauges.watch(runners, self.energy, lambda: (self._runners, self._load_end_ns))
            self._publish_compile(runners)
        if self.server is not None:
            await self.server.before_stage(self.stage)
        stage_start = time.perf_counter_ns()
        if self.workers is None:
            outcomes = await asyncio.gather(*(r.run(stop) for r in runners))
        else:
            outcomes = await self._in_workers(self.workers, plan, stop, shared)
        self._load_end_ns = time.perf_counter_ns()
        if self.server is not None:
            await self.server.after_stage(self.stage)
            self.server.describe(self.manifest)  # each window on disk as it closes (kill -9)
            self._save_manifest()
        shared.bar.show()
        if self.energy is not None:
            await self.energy.stage(plan.label or "steady", outcomes, stage_start)
        return outcomes, stage_records

    async def _in_workers(
        self, workers: WorkerPlan, plan: StagePlan, stop: asyncio.Event, shared: _Shared
    ) -> list[RunOutcome]:
        """The stage's one tenant split across worker processes; their outcomes, a dead one's reported."""
        (tenant,) = plan.tenants
        url = self.backend.describe().get("base_url")
        args = {**workers.args, "base_url": url}
        specs = [
            WorkerSpec(
                Share(k, workers.count),
                split(tenant.scenario, Share(k, workers.count)),
                workers.backend,
                args,
                self.run_id,
                self.out,
                shared.origin,
                plan.label,
                forward=self.gauges is not None,
            )
            for k in range(workers.count)
        ]
        before = dict(self.counts)
        gauges, (parent,) = self.gauges, self._runners  # the parent's runner: the gauges read it

        def on_counts(total: dict[str, int]) -> None:
            for k in ("ok", "degraded"):
                self.counts[k] = before[k] + total[k]
            parent.in_flight = sum(group.in_flight)
            if group.steady_start_ns is not None:
                parent.outcome.steady_start_ns = group.steady_start_ns
            shared.bar.tick()

        def on_records(records: list[RequestRecord]) -> None:
            assert gauges is not None
            for record in records:
                gauges.observe(record)

        group = self._group(workers, specs, on_counts, on_records if gauges is not None else None, url)
        results = await group.run(stop)
        parent.in_flight = 0
        self.worker_written += sum(r.written for r in results)
        self.manifest.workers = [r.describe() for r in results]
        outcomes = self._outcomes(results)
        self._save_manifest()
        return outcomes or [RunOutcome(started_unix=time.time(), interrupted=True)]

    def _group(
        self,
        workers: WorkerPlan,
        specs: list[WorkerSpec],
        on_counts: Callable[[dict[str, int]], None],
        forward: Callable[[list[RequestRecord]], None] | None,
        url: object,
    ) -> WorkerGroup | RayGroup:
        """The stage's workers: processes on this machine, or actors on the ``--ray`` cluster's nodes."""
        if workers.ray is None:
            self.err.print(f"load split across {workers.count} worker processes")
            return WorkerGroup(specs, on_counts, forward)
        self.err.print(
            f"load split across {workers.count} workers on the Ray cluster at {workers.ray.address} "
            f"({workers.ray.nodes} nodes, {workers.ray.cpus} CPUs)"
        )
        if loopback(str(url or "")) and not all(loopback(f"http://{ip}") for ip in workers.ray.node_ips):
            self.err.print(
                f"[yellow]warning[/yellow]: the backend's URL {url} is this machine's loopback; workers "
                "on the cluster's other machines cannot reach it (give --base-url an address they reach)"
            )
        return RayGroup(specs, on_counts, forward, on_placed=self._placed)

    def _outcomes(self, results: list[WorkerResult]) -> list[RunOutcome]:
        """The outcomes of the workers that finished; each one that died said in one line."""
        outcomes = []
        for r in results:
            if r.died:
                why = f" ({r.error})" if r.error else ""
                if r.exit_code is None and r.placement:  # its node is gone, or Ray lost its actor
                    where = f"on {r.placement.get('hostname')} ({r.placement.get('node_ip')}) was lost"
                else:
                    where = f"(pid {r.pid}) ended with exit code {r.exit_code}"
                self.err.print(f"[red]worker {r.index} {where}{why}[/red]; the records it wrote are kept")
                self.worker_died = True
            else:
                assert r.outcome is not None
                outcomes.append(r.outcome)
        return outcomes

    def _placed(self, results: list[WorkerResult]) -> None:
        """Where each worker of a cluster runs, in the manifest before the load (it survives a kill)."""
        self.manifest.workers = [r.describe() for r in results]
        self._save_manifest()

    async def _start_server(self) -> None:
        if self.server is not None:
            await self.server.start()

    def _finish_server(self) -> None:
        if self.server is None:
            return
        self.server.stop()
        self.server.describe(self.manifest)
        self._save_manifest()

    async def _start_energy(self) -> None:
        if self.energy is not None:
            await self.energy.start()

    def _finish_energy(self) -> None:
        if self.energy is None:
            return
        self.manifest.energy = self.energy.finish(self.out)
        self._save_manifest()

    def _publish_compile(self, runners: list[Runner]) -> None:
        """The manifest's compile evidence (warm pass, frames compiled under the clock) as gauges."""
        if self.gauges is None:
            return
        facts = self.manifest.backend
        self.gauges.publish_compile(runners, (facts.compile if facts is not None else None) or {})

    def _runner(
        self,
        tenant: Tenant,
        label: str | None,
        writer: JsonlWriter,
        chains: JsonlWriter,
        tick: Callable[[RequestRecord], None],
        cold: ColdTracker,
        origin: int,
    ) -> Runner:
        def write_chain(record: ChainRecord) -> None:
            chains.write(record)
            chains.flush()  # one per chain: a killed run keeps every chain it finished

        context = RunContext(
            self.run_id,
            origin_ns=origin,
            cold=cold,
            annotator=self.energy.meter if self.energy is not None and self.energy.measuring else None,
            on_record=tick,
            chain_sink=write_chain,
        )
        return Runner(
            tenant.scenario,
            self.backend,
            writer,
            context,
            requests=iter(tenant.requests) if tenant.requests is not None else None,
            offsets=tenant.offsets,
            load_stage=label,
        )


@dataclass(frozen=True, slots=True)
class _Shared:
    """What every stage of one launch shares: the record files, the bar, the cold tracker, the origin."""

    writer: JsonlWriter
    chains: JsonlWriter
    bar: ProgressBar
    cold: ColdTracker
    origin: int
    keep: bool


def _stopped(result: LaunchResult, outcomes: list[RunOutcome], received: list[int]) -> bool:
    """Fold a stage's outcomes into the result; True when no further stage may run."""
    _merge(result.outcome, outcomes)
    result.write_error = next((o.write_error for o in outcomes if o.write_error), None)
    if result.write_error is not None:
        return True
    if result.outcome.interrupted:
        result.signal = received[0] if received else signal.SIGINT
        return True
    return False


def _merge(total: RunOutcome, parts: Iterable[RunOutcome]) -> None:
    for part in parts:
        total.by_status.update(part.by_status)
        total.by_reason.update(part.by_reason)
        total.chains.update(part.chains)
        total.interrupted = total.interrupted or part.interrupted
        total.backlog_max = max(total.backlog_max, part.backlog_max)
        total.not_sent += part.not_sent
        total.write_delay_ms_max = max(total.write_delay_ms_max, part.write_delay_ms_max)
        total.ended_unix = max(total.ended_unix, part.ended_unix)
