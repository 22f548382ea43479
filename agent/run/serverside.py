"""The server's side of a run: its own metrics scraped beside the load, its prefix cache reset between stages.

``ServerSide`` finds the endpoints (those given, and the backend's own ``/metrics`` when it answers),
scrapes them on a thread into ``server_metrics.csv`` for the whole run, brackets each stage with a full
scrape, and keeps each stage's window (unix seconds) so the summary can read the server's figures per
stage. Before each stage it empties the server's prefix cache where the backend knows a way, so a warm
cache from an earlier stage or run never inflates a result; each reset, or why there was none, goes to
the manifest.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from rich.console import Console

from agent.backends.base import Backend
from agent.backends.capabilities import CacheReset, PrefixCacheResetting, ServesMetrics
from agent.core.errors import InfermeterError
from agent.core.manifest import CacheResetEntry, Manifest, PrefixCacheInfo, ServerMetricsInfo, StageWindow
from agent.core.rundir import RunDir
from agent.transport.scrape import Endpoint, ServerScraper

__all__ = ["ServerPlan", "ServerSide"]

logger = structlog.get_logger(__name__)


@dataclass(slots=True)
class ServerPlan:
    """Which metrics endpoints to scrape, how often, and whether to reset the prefix cache per stage."""

    endpoints: list[str] = field(default_factory=list)
    #: also scrape the backend's own ``/metrics`` when it answers with Prometheus text
    discover: bool = True
    interval_s: float = 1.0
    reset_prefix_cache: bool = True


class ServerSide:
    """One run's scraper, stage windows and prefix-cache resets."""

    def __init__(self, plan: ServerPlan, backend: Backend, out: Path, err: Console) -> None:
        self.plan = plan
        self.backend = backend
        self.out = out
        self.err = err
        self.scraper: ServerScraper | None = None
        self.windows: list[StageWindow] = []
        self.resets: list[CacheResetEntry] = []
        self.skipped: list[str] = []
        self._stage_start: float | None = None

    async def start(self) -> None:
        """Probe the endpoints and start scraping (a given one that does not answer yet is kept)."""
        endpoints = [Endpoint(url, given=True) for url in self.plan.endpoints]
        own = self.backend.metrics_url if isinstance(self.backend, ServesMetrics) else None
        if self.plan.discover and own is not None and own not in self.plan.endpoints:
            why = await asyncio.to_thread(ServerScraper.probe, own)
            if why is None:
                endpoints.append(Endpoint(own, given=False))
            else:
                self.skipped.append(f"{own}: {why}")
        for ep in endpoints:
            if ep.given and (why := await asyncio.to_thread(ServerScraper.probe, ep.url)) is not None:
                self.err.print(f"server metrics: {why}; scraping it anyway, the errors are counted")
        if not endpoints:
            return
        self.scraper = ServerScraper(
            endpoints, RunDir(self.out).server_metrics, interval_s=self.plan.interval_s
        )
        await asyncio.to_thread(self.scraper.start)
        engines = ", ".join(f"{ep.url} ({ep.engine or 'unknown engine'})" for ep in endpoints)
        self.err.print(f"server metrics: scraping {engines} every {self.plan.interval_s:g} s")

    async def before_stage(self, label: str) -> None:
        """Reset the prefix cache where wanted and possible, then mark the window's start."""
        if self.plan.reset_prefix_cache:
            await self._reset(label)
        if self.scraper is not None:
            await asyncio.to_thread(self.scraper.mark)
        self._stage_start = time.time()

    async def _reset(self, label: str) -> None:
        if not isinstance(self.backend, PrefixCacheResetting):
            self.resets.append(
                CacheResetEntry(stage=label, ok=False, why=f"backend '{self.backend.name}' has no way")
            )
            return
        t0 = time.perf_counter()
        try:
            done = await self.backend.reset_prefix_cache()
        except (InfermeterError, OSError, RuntimeError, ValueError) as e:  # the manifest says why
            done = CacheReset(ok=False, how=None, why=f"{e.__class__.__name__}: {e}")
        if not done.ok and not self.resets:
            self.err.print(f"prefix cache: not reset ({done.why})")
        ms = round((time.perf_counter() - t0) * 1000, 1)
        self.resets.append(CacheResetEntry(stage=label, **done.to_dict(), ms=ms))

    async def after_stage(self, label: str) -> None:
        """Mark the window's end and keep the window."""
        if self.scraper is not None:
            await asyncio.to_thread(self.scraper.mark)
        start = self._stage_start if self._stage_start is not None else time.time()
        self.windows.append(
            StageWindow(stage=label, start_unix=round(start, 3), end_unix=round(time.time(), 3))
        )
        self._stage_start = None

    def stop(self) -> None:
        """Stop scraping (one last full scrape); safe to call twice."""
        if self.scraper is not None:
            self.scraper.stop()

    def describe(self, manifest: Manifest) -> None:
        """Fill the manifest's ``server_metrics`` and ``prefix_cache`` sections."""
        metrics = ServerMetricsInfo.model_validate(
            self.scraper.describe() if self.scraper else {"file": None}
        )
        if self.skipped:
            metrics.not_scraped = self.skipped
        metrics.windows = list(self.windows)
        manifest.server_metrics = metrics
        policy = "reset" if self.plan.reset_prefix_cache else "keep"
        manifest.prefix_cache = PrefixCacheInfo(policy=policy, resets=list(self.resets))
