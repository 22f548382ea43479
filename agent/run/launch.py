"""Carry out a run: start the backend, run its stages (each one or more tenants at once), write files.

``run``, ``sweep`` and ``replay`` all come through here: a plain run is one stage with one tenant, a
multi-tenant run one stage with several, a sweep one stage per load level (stopped early at saturation),
a replay one stage whose tenant carries the trace's requests and clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from agent.backends.base import Backend
from agent.backends.capabilities import Warming
from agent.core.errors import InfermeterError, RecordWriteError
from agent.core.files import release_headroom
from agent.core.manifest import BackendFacts, EnergyInfo, Manifest, ManifestFile, write_json_atomic
from agent.core.record import ChainRecord, GenerationRequest, RequestRecord
from agent.core.rundir import RunDir
from agent.core.scenario import Scenario
from agent.energy.meter import EnergyMeter
from agent.run.prompts import prepare_workloads
from agent.run.runner import ColdTracker, RunContext, Runner, expected_records, request_shapes
from agent.run.serverside import ServerPlan, ServerSide
from agent.run.writer import RunOutcome, wait_ready
from exporters.http import MetricsServer
from exporters.jsonl import JsonlWriter

__all__ = ["EnergyPlan", "Launch", "MetricsEndpoint", "ServerPlan", "StagePlan", "Tenant"]

logger = structlog.get_logger(__name__)


@dataclass(slots=True)
class Tenant:
    """One scenario inside a stage; a replay tenant brings its own requests and clock."""

    scenario: Scenario
    requests: list[GenerationRequest] | None = None
    offsets: list[float] | None = None

    def expected(self) -> int | None:
        """Records this tenant writes when bounded by count (None when bounded by time)."""
        if self.requests is not None:
            return self.scenario.warmup + len(self.requests)
        return expected_records(self.scenario)


@dataclass(slots=True)
class StagePlan:
    """A load level: its label (None for a plain run), the value swept over, and its tenants."""

    label: str | None
    tenants: list[Tenant]
    value: float | None = None


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


#: Signals that end a run the same way: in-flight requests recorded as interrupted, exit 128 + signal.
#: SIGHUP is among them (a closed terminal or ssh session ends the run cleanly).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

#: how often the progress bar is told the record counts (it redraws ten times a second)
PROGRESS_EVERY_S = 0.1


def _progress(console: Console, enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("ok {task.fields[ok]}  degraded {task.fields[degraded]}"),
        TimeElapsedColumn(),
        console=console,
        disable=not enabled,
        transient=False,
    )


@dataclass(slots=True)
class MetricsEndpoint:
    """Where and how long a run serves its Prometheus metrics."""

    server: MetricsServer
    host: str = "127.0.0.1"
    port: int = 9464
    linger_s: float = 0.0


@dataclass(slots=True)
class EnergyPlan:
    """The run's energy meter and, when no stored baseline applies, how long to measure idle first."""

    meter: EnergyMeter
    baseline_s: float | None = None


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
        progress: bool = True,
        metrics: MetricsEndpoint | None = None,
        energy: EnergyPlan | None = None,
        server: ServerPlan | None = None,
    ) -> None:
        self.backend = backend
        self.out = out
        self.manifest_file = manifest
        self.run_id = run_id
        self.err = err
        self.show_progress = progress
        self.metrics = metrics
        self.energy = energy
        self.server = ServerSide(server, backend, out, err) if server is not None else None
        #: live state for ``/status`` while the run lasts
        self.counts = {"ok": 0, "degraded": 0}
        self.stage: str | None = None
        self.expected: int | None = None
        self._runners: list[Runner] = []
        #: when the current stage's load ended (None while it runs): GPU energy after it is not the load's
        self._load_end_ns: int | None = None
        self._started = time.time()
        #: stop signals received; from the moment the run directory exists each one ends the load
        #: (never a KeyboardInterrupt), and after the load, until ``release_signals``, it is only noted,
        #: so the summary and manifest are always written
        self.received: list[int] = []
        self._stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self._on_signal, sig)
        if metrics is not None:
            metrics.server.status_from(self.status)

    def _on_signal(self, signum: int) -> None:
        self.received.append(signum)
        self._stop.set()

    def release_signals(self) -> None:
        """Stop signals act as usual again (the run's files are written)."""
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)

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
        stages: list[StagePlan],
        *,
        after_stage: Callable[[StagePlan, list[RequestRecord]], str | None] | None = None,
        prepare: Callable[[Backend], Awaitable[list[StagePlan]]] | None = None,
    ) -> LaunchResult:
        """Run every stage in order (``after_stage`` returning a reason stops early); close the backend."""
        stop, received = self._stop, self.received
        try:
            if self.metrics is not None:
                if not self.metrics.server.running:
                    await self.metrics.server.start(self.metrics.host, self.metrics.port)
                url = self.metrics.server.url
                self.err.print(f"Prometheus metrics on {url}/metrics")
                self.manifest.metrics_url = f"{url}/metrics"
            await self.start_backend()
            try:
                await self._make_prompts(stages)
                if prepare is not None:
                    with self.err.status("preparing requests"):
                        stages = await prepare(self.backend)
                await self._warm(stages)
                await self._start_server()
                await self._start_energy()
                try:
                    result = await self._stages(stages, stop, received, after_stage)
                finally:
                    self._finish_energy()
                    self._finish_server()
            finally:
                await self.backend.close()
            if self.metrics is not None and self.metrics.linger_s and not stop.is_set():
                self.err.print(f"serving metrics {self.metrics.linger_s:g} s more (Ctrl-C ends)")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.metrics.linger_s)
            return result
        except BaseException as e:  # whatever ends the run here, the manifest says so before it goes on
            self.fail(str(e) or e.__class__.__name__)
            raise
        finally:
            if self.metrics is not None:
                await self.metrics.server.close()

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

    def status(self) -> dict[str, Any]:
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

    async def _stages(
        self,
        stages: list[StagePlan],
        stop: asyncio.Event,
        received: list[int],
        after_stage: Callable[[StagePlan, list[RequestRecord]], str | None] | None,
    ) -> LaunchResult:
        expected = [t.expected() for st in stages for t in st.tenants]
        total = None if any(e is None for e in expected) else sum(e or 0 for e in expected)
        self.expected = total
        origin = time.perf_counter_ns()
        cold = ColdTracker(stages[0].tenants[0].scenario.load.idle_gap)
        result = LaunchResult(RunOutcome(started_unix=time.time()), origin_ns=origin)
        progress = _progress(self.err, self.show_progress)
        with (
            progress,
            JsonlWriter(RunDir(self.out).records) as writer,
            JsonlWriter(RunDir(self.out).chains) as chains,
        ):
            task = progress.add_task(stages[0].tenants[0].scenario.name, total=total, ok=0, degraded=0)
            bar = _Bar(progress, task, self.counts)
            for plan in stages:
                shared = _Shared(writer, chains, bar, cold, origin, keep=after_stage is not None)
                outcomes, records = await self._stage(plan, stop, shared)
                result.stages_run.append(plan)
                if _stopped(result, outcomes, received):
                    break
                if after_stage is not None and (why := after_stage(plan, records)) is not None:
                    result.stopped_early = why
                    break
        if chains.count == 0:
            RunDir(self.out).chains.unlink(missing_ok=True)
        result.written = writer.count
        self._backend_facts()  # counters such as compile evidence grew
        if self.metrics is not None:
            self._publish_compile(self._runners)
        return result

    async def _stage(
        self, plan: StagePlan, stop: asyncio.Event, shared: _Shared
    ) -> tuple[list[RunOutcome], list[RequestRecord]]:
        """One stage: its tenants' runners at once; their outcomes, and its records when kept."""
        stage_records: list[RequestRecord] = []

        def tick(record: RequestRecord) -> None:
            self.counts[record.status] += 1
            if self.metrics is not None:
                self.metrics.server.metrics.observe(record)
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
        if self.metrics is not None:
            self._watch(runners)
        if self.server is not None:
            await self.server.before_stage(self.stage)
        stage_start = time.perf_counter_ns()
        outcomes = await asyncio.gather(*(r.run(stop) for r in runners))
        self._load_end_ns = time.perf_counter_ns()
        if self.server is not None:
            await self.server.after_stage(self.stage)
            self.server.describe(self.manifest)  # each window on disk as it closes (kill -9)
            self._save_manifest()
        shared.bar.show()
        await self._energy_stage(plan.label or "steady", outcomes, stage_start)
        return outcomes, stage_records

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
        """Idle baseline (stored or measured now, with the model loaded and idle), then the poller."""
        plan = self.energy
        if plan is None:
            return
        meter = plan.meter
        if meter.source.unavailable is None and meter.baseline is None and plan.baseline_s:
            with self.err.status(f"measuring idle power for {plan.baseline_s:g} s (energy baseline)"):
                await asyncio.to_thread(meter.calibrate, plan.baseline_s)
        meter.start()
        if meter.unavailable:
            self.err.print(f"energy: unavailable — {meter.unavailable}")

    def _finish_energy(self) -> None:
        plan = self.energy
        if plan is None:
            return
        meter = plan.meter
        meter.stop()
        info = meter.describe()
        if meter.unavailable is None:
            samples = meter.write_trace(RunDir(self.out).power)
            write_json_atomic(
                RunDir(self.out).energy,
                {"baseline": info.get("baseline"), "poller": info.get("poller"), "stages": meter.stages},
            )
            info["samples_file"] = f"{RunDir.power} ({samples} samples)"
        self.manifest.energy = EnergyInfo.model_validate(info)
        self._save_manifest()

    async def _energy_stage(self, label: str, outcomes: list[RunOutcome], stage_start_ns: int) -> None:
        """Record the stage's macro window from the end of every tenant's warmup (steady-state J/token)."""
        plan = self.energy
        if plan is None or plan.meter.unavailable:
            return
        start_ns = max((o.steady_start_ns for o in outcomes), default=0) or stage_start_ns
        end_ns = time.perf_counter_ns()
        await wait_ready(plan.meter, end_ns)
        plan.meter.stage(label, start_ns, end_ns)

    def _watch(self, runners: list[Runner]) -> None:
        """Backend up and live in-flight gauges for each tenant of the stage about to run."""
        assert self.metrics is not None
        m = self.metrics.server.metrics
        if self.energy is not None and not self.energy.meter.source.unavailable:
            meter = self.energy.meter
            m.track_gpus(meter.poller.latest)
            if meter.baseline is not None and m.energy_since_ns is None:

                def over_baseline(start_ns: int, end_ns: int) -> float | None:
                    """The stretch's steady-state part: after every warmup, before the load ended."""
                    steady = [r.outcome.steady_start_ns for r in self._runners]
                    if not steady or not all(steady):
                        return None  # warmup (or between stages): the dashboard's J/token leaves it out
                    start_ns = max(start_ns, *steady)
                    if self._load_end_ns is not None:
                        end_ns = min(end_ns, self._load_end_ns)
                    if end_ns <= start_ns:
                        return None
                    w = meter.window(start_ns, end_ns)
                    return w.energy_j if w is not None else None

                m.track_energy(time.perf_counter_ns(), over_baseline, meter.poller.latest_ns)
        for r in runners:
            labels = (self.backend.name, self.backend.model, r.scenario.name)
            m.declare(*labels, open_loop=r.scenario.load.arrival != "closed", slo=r.scenario.slo.model_dump())
            m.set_backend_up(*labels, up=True)
            m.track_in_flight(*labels, lambda r=r: float(r.in_flight))  # type: ignore[misc]
        self._publish_compile(runners)

    def _publish_compile(self, runners: list[Runner]) -> None:
        """The manifest's compile evidence (warm pass, frames compiled under the clock) as gauges."""
        assert self.metrics is not None
        facts = self.manifest.backend
        evidence = (facts.compile if facts is not None else None) or {}
        for r in runners:
            labels = (self.backend.name, self.backend.model, r.scenario.name)
            self.metrics.server.metrics.set_compile(*labels, evidence)

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
            annotator=self.energy.meter if self.energy and not self.energy.meter.unavailable else None,
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


class _Bar:
    """The run's progress bar: ok and degraded counts, redrawn at most every ``PROGRESS_EVERY_S``."""

    def __init__(self, progress: Progress, task: TaskID, counts: dict[str, int]) -> None:
        self.progress, self.task, self.counts = progress, task, counts
        self._shown = 0.0

    def tick(self) -> None:
        """A record was written; the bar redraws ten times a second, telling it more often costs the load."""
        if (now := time.monotonic()) >= self._shown + PROGRESS_EVERY_S:
            self._shown = now
            self.show()

    def show(self) -> None:
        """Redraw now."""
        ok, degraded = self.counts["ok"], self.counts["degraded"]
        self.progress.update(self.task, completed=ok + degraded, ok=ok, degraded=degraded)

    def describe(self, label: str) -> None:
        """Name the stage under way."""
        self.progress.update(self.task, description=label)


@dataclass(frozen=True, slots=True)
class _Shared:
    """What every stage of one launch shares: the record files, the bar, the cold tracker, the origin."""

    writer: JsonlWriter
    chains: JsonlWriter
    bar: _Bar
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
