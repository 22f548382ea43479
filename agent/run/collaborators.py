"""What a launch is given besides its backend: stop signals, the progress bar, energy and the gauges.

``Launch`` runs stages and writes the run's files; each concern around that is one object here, built by
the command and handed to it, so a launch can be driven with any of them left out (no metrics endpoint,
no energy meter, a progress bar that draws nothing) and each can be tried on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from agent.backends.base import Backend
from agent.core.manifest import EnergyInfo, write_json_atomic
from agent.core.record import RequestRecord
from agent.core.rundir import RunDir
from agent.energy.meter import EnergyMeter
from agent.run.runner import Runner
from agent.run.writer import RunOutcome, wait_ready
from exporters.http import MetricsServer

__all__ = [
    "PROGRESS_EVERY_S",
    "STOP_SIGNALS",
    "EnergyPlan",
    "EnergyWatch",
    "Gauges",
    "MetricsEndpoint",
    "ProgressBar",
    "RunProgress",
    "StopSignals",
]

#: Signals that end a run the same way: in-flight requests recorded as interrupted, exit 128 + signal.
#: SIGHUP is among them (a closed terminal or ssh session ends the run cleanly).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

#: how often the progress bar is told the record counts (it redraws ten times a second)
PROGRESS_EVERY_S = 0.1


class StopSignals:
    """The stop signals as one event: once installed, each one ends the load, never a KeyboardInterrupt.

    After the load, until ``release``, a signal is only noted, so the summary and manifest are always
    written; ``received`` keeps every one, in order (the exit code is 128 + the first).
    """

    def __init__(self, signals: Sequence[signal.Signals] = STOP_SIGNALS) -> None:
        self.signals = tuple(signals)
        self.received: list[int] = []
        self.event = asyncio.Event()
        self._installed = False

    def install(self) -> None:
        """Take the signals over on the running loop."""
        loop = asyncio.get_running_loop()
        for sig in self.signals:
            loop.add_signal_handler(sig, self._on_signal, sig)
        self._installed = True

    def _on_signal(self, signum: int) -> None:
        self.received.append(signum)
        self.event.set()

    def release(self) -> None:
        """Stop signals act as usual again (the run's files are written)."""
        if not self._installed:
            return
        loop = asyncio.get_running_loop()
        for sig in self.signals:
            loop.remove_signal_handler(sig)
        self._installed = False


class ProgressBar:
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


class RunProgress:
    """Where the progress bar draws (the error console) and whether it draws at all."""

    def __init__(self, console: Console, enabled: bool = True) -> None:
        self.console, self.enabled = console, enabled

    @contextlib.contextmanager
    def bar(self, name: str, total: int | None, counts: dict[str, int]) -> Iterator[ProgressBar]:
        """A bar for ``total`` records (None: open-ended), drawn while the block runs."""
        progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("ok {task.fields[ok]}  degraded {task.fields[degraded]}"),
            TimeElapsedColumn(),
            console=self.console,
            disable=not self.enabled,
            transient=False,
        )
        with progress:
            yield ProgressBar(progress, progress.add_task(name, total=total, ok=0, degraded=0), counts)


@dataclass(slots=True)
class EnergyPlan:
    """The run's energy meter and, when no stored baseline applies, how long to measure idle first."""

    meter: EnergyMeter
    baseline_s: float | None = None


class EnergyWatch:
    """The run's energy: the idle baseline, the poller, each stage's macro window and the files after."""

    def __init__(self, plan: EnergyPlan, err: Console) -> None:
        self.plan, self.meter, self.err = plan, plan.meter, err

    @property
    def measuring(self) -> bool:
        """True while the meter has a source it can read."""
        return not self.meter.unavailable

    async def start(self) -> None:
        """Idle baseline (stored or measured now, with the model loaded and idle), then the poller."""
        meter, baseline_s = self.meter, self.plan.baseline_s
        if meter.source.unavailable is None and meter.baseline is None and baseline_s:
            with self.err.status(f"measuring idle power for {baseline_s:g} s (energy baseline)"):
                await asyncio.to_thread(meter.calibrate, baseline_s)
        meter.start()
        if meter.unavailable:
            self.err.print(f"energy: unavailable — {meter.unavailable}")

    async def stage(self, label: str, outcomes: list[RunOutcome], stage_start_ns: int) -> None:
        """The stage's macro window from the end of every tenant's warmup (steady-state J/token)."""
        if not self.measuring:
            return
        start_ns = max((o.steady_start_ns for o in outcomes), default=0) or stage_start_ns
        end_ns = time.perf_counter_ns()
        await wait_ready(self.meter, end_ns)
        self.meter.stage(label, start_ns, end_ns)

    def finish(self, out: Path) -> EnergyInfo:
        """Stop the poller; write the power trace and ``energy.json``; the manifest's energy section."""
        meter = self.meter
        meter.stop()
        info = meter.describe()
        if meter.unavailable is None:
            samples = meter.write_trace(RunDir(out).power)
            write_json_atomic(
                RunDir(out).energy,
                {"baseline": info.get("baseline"), "poller": info.get("poller"), "stages": meter.stages},
            )
            info["samples_file"] = f"{RunDir.power} ({samples} samples)"
        return EnergyInfo.model_validate(info)


@dataclass(slots=True)
class MetricsEndpoint:
    """Where and how long a run serves its Prometheus metrics."""

    server: MetricsServer
    host: str = "127.0.0.1"
    port: int = 9464
    linger_s: float = 0.0


class Gauges:
    """The run's ``/metrics``: served while it lasts, fed every record, the backend's and GPUs' gauges."""

    def __init__(self, endpoint: MetricsEndpoint, backend: Backend, err: Console) -> None:
        self.endpoint, self.backend, self.err = endpoint, backend, err
        self.metrics = endpoint.server.metrics

    async def serve(self) -> str:
        """Serve (if not already) and say where; the URL of ``/metrics``."""
        server = self.endpoint.server
        if not server.running:
            await server.start(self.endpoint.host, self.endpoint.port)
        self.err.print(f"Prometheus metrics on {server.url}/metrics")
        return f"{server.url}/metrics"

    def status_from(self, status: Callable[[], dict[str, object]]) -> None:
        """Where ``/status`` reads the live run from."""
        self.endpoint.server.status_from(status)

    def observe(self, record: RequestRecord) -> None:
        """One finished request into the histograms and counters."""
        self.metrics.observe(record)

    def watch(self, runners: list[Runner], energy: EnergyWatch | None, live: Live) -> None:
        """Backend up and live in-flight gauges for each tenant of the stage about to run; GPU gauges.

        ``live`` tells the energy gauge, whenever it is read, which runners run now and when the load
        ended (None while it runs).
        """
        m = self.metrics
        if energy is not None and not energy.meter.source.unavailable:
            meter = energy.meter
            m.track_gpus(meter.poller.latest)
            if meter.baseline is not None and m.energy_since_ns is None:
                m.track_energy(time.perf_counter_ns(), _over_baseline(meter, live), meter.poller.latest_ns)
        for r in runners:
            labels = (self.backend.name, self.backend.model, r.scenario.name)
            m.declare(*labels, open_loop=r.scenario.load.arrival != "closed", slo=r.scenario.slo.model_dump())
            m.set_backend_up(*labels, up=True)
            m.track_in_flight(*labels, lambda r=r: float(r.in_flight))  # type: ignore[misc]

    def publish_compile(self, runners: list[Runner], evidence: dict[str, object]) -> None:
        """The manifest's compile evidence (warm pass, frames compiled under the clock) as gauges."""
        for r in runners:
            self.metrics.set_compile(self.backend.name, self.backend.model, r.scenario.name, evidence)

    async def linger(self, stop: asyncio.Event) -> None:
        """Keep serving ``linger_s`` after the load so a scrape sees the end (a stop signal ends it)."""
        if not self.endpoint.linger_s or stop.is_set():
            return
        self.err.print(f"serving metrics {self.endpoint.linger_s:g} s more (Ctrl-C ends)")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), self.endpoint.linger_s)

    async def close(self) -> None:
        """Stop serving."""
        await self.endpoint.server.close()


#: the runners of the stage under way, and when its load ended (None while it runs)
Live = Callable[[], tuple[list[Runner], int | None]]


def _over_baseline(meter: EnergyMeter, live: Live) -> Callable[[int, int], float | None]:
    """Energy over the idle baseline of a stretch's steady-state part: after every warmup, before the end."""

    def energy(start_ns: int, end_ns: int) -> float | None:
        runners, end = live()
        steady = [r.outcome.steady_start_ns for r in runners]
        if not steady or not all(steady):
            return None  # warmup (or between stages): the dashboard's J/token leaves it out
        start_ns = max(start_ns, *steady)
        if end is not None:
            end_ns = min(end_ns, end)
        if end_ns <= start_ns:
            return None
        w = meter.window(start_ns, end_ns)
        return w.energy_j if w is not None else None

    return energy
