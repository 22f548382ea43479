"""``infermeter daemon``: low-rate canary probes beside production inference, for months on end.

Each target (a backend and a scenario's prompts) is probed once per interval with jitter, under one
concurrency cap across targets, so production barely notices. Every probe becomes a record that feeds
the Prometheus metrics (the ``backend`` label is the target's name) and, every Nth ok response, a
rotating JSONL of samples for the offline analyzer. A target that cannot be reached is backed off
exponentially with a cap and flips ``infermeter_backend_up`` to 0; the daemon never exits because a
target is down. SIGTERM/SIGINT stop probing and give in-flight probes a grace period; SIGHUP reloads
the config, and a bad one is rejected while the old one keeps running. Nothing grows without bound:
state per target is a few fields, metrics windows are capped, samples rotate.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from agent import __version__
from agent.backends import create
from agent.backends.base import Backend
from agent.backends.capabilities import ServesMetrics
from agent.core.errors import ConfigError, InfermeterError, RecordWriteError
from agent.core.record import RequestRecord
from agent.core.redact import is_secret_key, redact_obj, remember
from agent.core.rundir import SamplingDir
from agent.core.scenario import Scenario, load_scenario, resolve_scenario
from agent.run.daemon_config import DaemonConfig, TargetConfig, load_daemon_config
from agent.run.prompts import prepare_workloads
from agent.run.runner import ColdTracker, RunContext, Runner
from agent.transport.scrape import Endpoint, ServerScraper
from exporters.http import MetricsServer
from exporters.jsonl import RotatingJsonl
from exporters.prometheus import RecordMetrics

__all__ = ["DOWN_REASONS", "Daemon"]

logger = structlog.get_logger(__name__)

#: Degraded reasons that mean the backend was not reached at all (an HTTP 500 or a slow first token
#: means it answered: up, but degraded).
DOWN_REASONS = frozenset({"connection", "connection_reset", "timeout_connect", "backend_start", "workload"})


@dataclass(slots=True)
class _Target:
    """One probed target: its backend, its prompts, and what happened last."""

    cfg: TargetConfig
    backend: Backend
    scenario: Scenario
    interval_s: float
    requests: Any
    cold: ColdTracker
    started: bool = False
    up: bool | None = None
    failures: int = 0
    down_since: float | None = None
    probes: int = 0
    ok: int = 0
    last: dict[str, object] | None = None
    next_at: float = 0.0
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    #: the probe loop's last unexpected error while it waits to be restarted (readiness is red)
    loop_error: dict[str, object] | None = None
    loop_failures: int = 0
    #: the target's own metrics endpoint(s), scraped into the sampling directory once it answered
    scraper: ServerScraper | None = None
    scrape_note: str | None = None


class Daemon:
    """Owns the config, the targets' probe loops, the metrics endpoint and the sample files."""

    def __init__(self, config_path: Path, *, metrics: RecordMetrics | None = None) -> None:
        self.config_path = config_path
        self.metrics = metrics or RecordMetrics(version=__version__)
        self.config: DaemonConfig | None = None
        self.targets: dict[str, _Target] = {}
        self.server: MetricsServer | None = None
        self.samples: RotatingJsonl | None = None
        self.reloads = 0
        self.config_id = "none"
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._sem = asyncio.Semaphore(1)
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._started_unix = time.time()
        #: the last sample write's failure while samples cannot be written (readiness is red)
        self.sample_error: dict[str, object] | None = None
        self.sample_failures = 0

    # ---- lifecycle ------------------------------------------------------------------------------

    async def run(self) -> int:
        """Load the config (a bad one is a ConfigError), serve, probe until a stop signal; exit code 0."""
        config = load_daemon_config(self.config_path)
        built = self.build_targets(config)
        samples = _samples_writer(config)
        self.server = MetricsServer(self.metrics, ready=self._ready, status=self.status)
        try:
            await self.server.start(config.metrics.host, config.metrics.port)
        except OSError as e:
            raise ConfigError(f"daemon config {self.config_path}: metrics: {e}") from e
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self._reload.set)
        try:
            self._apply(config, built, samples)
            logger.info("daemon started", targets=list(self.targets), url=self.server.url)
            while not self._stop.is_set():
                await _first(self._stop.wait(), self._reload.wait())
                if self._reload.is_set() and not self._stop.is_set():
                    self._reload.clear()
                    await self.reload()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            await self._stop_targets(list(self.targets))
            if self.samples is not None:
                self.samples.close()
            await self.server.close()
            logger.info("daemon stopped")
        return 0

    def request_stop(self) -> None:
        """Stop probing (SIGTERM/SIGINT do this)."""
        self._stop.set()

    async def reload(self) -> bool:
        """Re-read the config; keep the old one running when the new one is bad. True when applied."""
        try:
            config = load_daemon_config(self.config_path)
            built = self.build_targets(config)
            samples = _samples_writer(config)
        except InfermeterError as e:
            logger.error("config rejected; the old one keeps running", error=str(e))
            return False
        except Exception as e:  # noqa: BLE001 - whatever a new config does, the daemon keeps running
            logger.error("config rejected; the old one keeps running", error=f"{e.__class__.__name__}: {e}")
            return False
        old = self.config
        if old is not None and old.metrics != config.metrics:
            logger.warning("metrics listen address changes need a restart", kept=old.metrics.model_dump())
        await self._stop_targets(list(self.targets))
        self._apply(config, built, samples)
        self.reloads += 1
        logger.info("config reloaded", targets=list(self.targets))
        return True

    def build_targets(self, config: DaemonConfig) -> dict[str, _Target]:
        """Every target built before the running state is touched, so a bad one changes nothing."""
        return {t.name: self._build(t, config) for t in config.targets}

    def _apply(self, config: DaemonConfig, built: dict[str, _Target], samples: RotatingJsonl | None) -> None:
        self.config = config
        # probes' run_id ends with it: the analyzer keeps samples taken under different configs apart
        self.config_id = hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:8]
        self._sem = asyncio.Semaphore(config.probe.max_concurrency)
        if self.samples is not None:
            with contextlib.suppress(OSError, InfermeterError):
                self.samples.close()
        self.samples = samples
        self.sample_error = None
        self.targets = built
        for name, target in built.items():
            target.next_at = time.time()
            self._tasks[name] = asyncio.create_task(self._supervise(target), name=f"probe-{name}")

    def _build(self, cfg: TargetConfig, config: DaemonConfig) -> _Target:
        probe = config.probe
        try:
            sc = load_scenario(resolve_scenario(cfg.scenario))
        except ConfigError as e:
            raise ConfigError(f"target {cfg.name}: {e}") from e
        data = sc.normalised() | {
            "requests": 1,
            "duration": None,
            "warmup": 0,
            "cooldown": 0,
            "concurrency": 1,
            "output_tokens": cfg.max_tokens or probe.max_tokens,
            "keep_output_every": 1,
            "timeout": {"first_token_s": probe.timeout, "total_s": probe.timeout},
            "load": {"arrival": "closed"},
            "sweep": None,
            "agent": None,
            "batch": None,
        }
        sc = sc.derive(data, location=f"target {cfg.name}: scenario {cfg.scenario} as a probe")
        for key, value in cfg.args.items():
            if is_secret_key(key):
                remember(value)
        try:
            backend = create(cfg.backend, dict(cfg.args))
        except InfermeterError as e:
            raise ConfigError(f"target {cfg.name}: {e}") from e
        return _Target(
            cfg=cfg,
            backend=backend,
            scenario=sc,
            interval_s=cfg.interval or probe.interval or 10.0,
            requests=None if sc.workload is not None else sc.requests_iter(),
            cold=ColdTracker(None),
        )

    async def _stop_targets(self, names: list[str]) -> None:
        """Stop the loops (in-flight probes get the grace period, then are cancelled); close backends."""
        grace = self.config.probe.grace if self.config and self.config.probe.grace is not None else 10.0
        tasks = [self._tasks.pop(n) for n in names if n in self._tasks]
        for n in names:
            if n in self.targets:
                self.targets[n].stop.set()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for n in names:
            target = self.targets.get(n)
            if target is not None and target.scraper is not None:
                await asyncio.to_thread(target.scraper.stop)
                target.scraper = None
            if target is not None and target.started:
                with contextlib.suppress(Exception):
                    await target.backend.close()
                target.started = False

    # ---- probing --------------------------------------------------------------------------------

    async def _supervise(self, t: _Target) -> None:
        """Run the target's probe loop and start it again when it fails.

        An unexpected error is logged, counted, shown in ``/status`` and turns readiness red; the loop
        starts again after a growing pause (1 s to 1 min) and readiness is green after its next probe.
        """
        pause = 1.0
        while not (t.stop.is_set() or self._stop.is_set()):
            try:
                await self._loop(t)
                return
            except Exception as e:  # a probe loop must never die silently (logged with its traceback)
                t.loop_failures += 1
                t.loop_error = {"at_unix": time.time(), "error": f"{e.__class__.__name__}: {e}"}
                self.metrics.daemon_errors.labels("probe_loop", t.cfg.name).inc()
                logger.exception("probe loop failed; restarting", target=t.cfg.name, pause_s=pause)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_first(t.stop.wait(), self._stop.wait()), pause)
            pause = min(pause * 2, 60.0)

    async def _loop(self, t: _Target) -> None:
        while not (t.stop.is_set() or self._stop.is_set()):
            delay = max(0.0, t.next_at - time.time())
            if delay:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(_first(t.stop.wait(), self._stop.wait()), delay)
                if t.stop.is_set() or self._stop.is_set():
                    return
            async with self._sem:
                await self._probe(t)
            t.loop_error = None
            t.next_at = time.time() + self._next_delay(t)

    def _next_delay(self, t: _Target) -> float:
        assert self.config is not None
        if t.up is False:
            b = self.config.backoff
            base = min(b.max or 300.0, (b.initial or 5.0) * b.factor ** (t.failures - 1))
        else:
            base = t.interval_s
        jitter = self.config.probe.jitter
        return base * random.uniform(1 - jitter, 1 + jitter)

    async def _probe(self, t: _Target) -> None:
        t.probes += 1
        if not t.started:
            try:
                await t.backend.start()
                t.started = True
                await self._start_scraper(t)
            except InfermeterError as e:
                with contextlib.suppress(Exception):
                    await t.backend.close()
                self._result(t, status="degraded", reason="backend_start", detail=str(e))
                return
        if t.requests is None:  # a workload's prompts are made once, with the target's own tokenizer
            try:
                await prepare_workloads([t.scenario], t.backend)
            except InfermeterError as e:
                self._result(t, status="degraded", reason="workload", detail=str(e))
                return
            t.requests = t.scenario.requests_iter()
        context = RunContext(f"daemon-{t.cfg.name}-{self.config_id}", cold=t.cold)
        runner = Runner(t.scenario, t.backend, _Sink(self, t), context, requests=t.requests, freeze_gc=False)
        await runner.run()

    async def _start_scraper(self, t: _Target) -> None:
        """Scrape the target's own metrics beside its probes (``server_metrics-<name>.csv``), once."""
        if t.scraper is not None or self.config is None or not t.cfg.server_metrics:
            return
        urls = [u for u in t.cfg.server_metrics if u != "auto"]
        own = t.backend.metrics_url if isinstance(t.backend, ServesMetrics) else None
        if "auto" in t.cfg.server_metrics and own is not None and own not in urls:
            why = await asyncio.to_thread(ServerScraper.probe, own)
            if why is None:
                urls.append(own)
            else:
                t.scrape_note = f"not scraped: {why}"
        if not urls:
            return
        cfg, folder = self.config.server_metrics, self.config.sampling.dir
        try:
            folder.mkdir(parents=True, exist_ok=True)
            scraper = ServerScraper(
                [Endpoint(u, given=u in t.cfg.server_metrics) for u in urls],
                SamplingDir(folder).server_metrics(t.cfg.name),
                interval_s=cfg.interval or 15.0,
                max_bytes=cfg.max_bytes,
            )
            await asyncio.to_thread(scraper.start)
        except OSError as e:
            t.scrape_note = f"not scraped: {folder}: {e.strerror or e}"
            return
        t.scraper, t.scrape_note = scraper, None

    def record_probe(self, t: _Target, record: RequestRecord) -> None:
        """A finished probe: metrics under the target's name, status, sampling."""
        labelled = record.model_copy(update={"backend": t.cfg.name})
        t.loop_error = None  # the restarted loop has finished a probe: readiness is green from here
        self.metrics.observe(labelled)
        self._result(
            t,
            status=record.status,
            reason=record.reason,
            detail=record.detail,
            ttft_ms=record.ttft_ms,
            e2e_ms=record.e2e_ms,
            output_tokens=record.output_tokens,
            model=record.model,
        )
        if record.status == "ok":
            t.ok += 1
            every = self.config.sampling.every if self.config else 0
            if self.samples is not None and every and t.ok % every == 0:
                self._sample(t, labelled)

    def _sample(self, t: _Target, record: RequestRecord) -> None:
        """Write one sample; a failure is logged when it starts, counted, shown, and retried next time."""
        assert self.samples is not None
        try:
            self.samples.write(record)
        except RecordWriteError as e:
            self.sample_failures += 1
            self.metrics.daemon_errors.labels("samples", t.cfg.name).inc()
            if self.sample_error is None:
                logger.error("samples cannot be written; probes go on, readiness is red", error=str(e))
            self.sample_error = {"at_unix": time.time(), "error": str(e)}
            return
        if self.sample_error is not None:
            logger.info("samples are written again", file=str(self.samples.path))
            self.sample_error = None

    def _result(self, t: _Target, *, status: str, reason: str | None, **facts: Any) -> None:
        up = reason not in DOWN_REASONS
        now = time.time()
        model = facts.get("model") or t.backend.model or "unknown"
        self.metrics.set_backend_up(t.cfg.name, model, t.scenario.name, up)
        if up and t.up is False:
            logger.info("target recovered", target=t.cfg.name, down_s=round(now - (t.down_since or now), 1))
        if not up and t.up is not False:
            logger.warning("target down", target=t.cfg.name, reason=reason, detail=facts.get("detail"))
            t.down_since = now
        t.failures = 0 if up else t.failures + 1
        t.up = up
        t.last = {"at_unix": now, "status": status, "reason": reason, **facts}

    # ---- endpoints ------------------------------------------------------------------------------

    def _ready(self) -> bool:
        """Ready while configured, every probe loop running and samples (if any) being written."""
        return (
            self.config is not None
            and bool(self.targets)
            and self.sample_error is None
            and all(t.loop_error is None for t in self.targets.values())
        )

    def status(self) -> dict[str, object]:
        """The ``/status`` document: the last result per target and the daemon's own facts, secrets masked."""
        now = time.time()
        return redact_obj(self._status(now))  # type: ignore[no-any-return]

    def _status(self, now: float) -> dict[str, object]:
        return {
            "version": __version__,
            "config": str(self.config_path),
            "uptime_s": round(now - self._started_unix, 1),
            "reloads": self.reloads,
            "ready": self._ready(),
            "samples": {
                "file": str(self.samples.path) if self.samples is not None else None,
                "written": self.samples.count if self.samples is not None else 0,
                "failures": self.sample_failures,
                "error": self.sample_error,
            },
            "targets": {
                name: {
                    "backend": t.cfg.backend,
                    "scenario": t.scenario.name,
                    "up": t.up,
                    "consecutive_failures": t.failures,
                    "probes": t.probes,
                    "next_probe_in_s": round(max(0.0, t.next_at - now), 3),
                    "last": t.last,
                    "loop_failures": t.loop_failures,
                    "loop_error": t.loop_error,
                    "server": t.scraper.describe() if t.scraper is not None else t.scrape_note,
                }
                for name, t in self.targets.items()
            },
        }


def _samples_writer(config: DaemonConfig) -> RotatingJsonl | None:
    """The sample files, opened (directory made) before the config is applied; None when sampling is off."""
    s = config.sampling
    if not s.every:
        return None
    try:
        return RotatingJsonl(s.dir, SamplingDir.SAMPLES, max_bytes=s.max_bytes, keep=s.keep)
    except RecordWriteError as e:
        raise ConfigError(f"sampling.dir: {e}") from e


class _Sink:
    """The Runner's record sink for one probe."""

    def __init__(self, daemon: Daemon, target: _Target) -> None:
        self.daemon, self.target = daemon, target

    def write(self, record: RequestRecord) -> None:
        self.daemon.record_probe(self.target, record)


async def _first(*aws: Any) -> None:
    """Wait until the first of several awaitables finishes; cancel the rest."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
