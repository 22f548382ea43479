"""The agent's own small HTTP face: ``/metrics`` (Prometheus text), ``/healthz``, ``/readyz``, ``/status``.

Bound to 127.0.0.1 unless told otherwise. ``/healthz`` answers while the process is alive; ``/readyz``
is 200 only when the owner says it is ready (config loaded, targets known); ``/status`` is the owner's
JSON snapshot (the daemon's last result per target).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from exporters.prometheus import RecordMetrics

__all__ = ["RENDER_REUSE_S", "MetricsServer"]

#: Scrapes this close together share one rendering of the metrics (Prometheus scrapes every few seconds;
#: a crowd of scrapers at once would otherwise each hold the event loop for a whole render).
RENDER_REUSE_S = 0.5

logger = structlog.get_logger(__name__)


class MetricsServer:
    """An aiohttp app serving ``metrics`` plus health, readiness and status endpoints."""

    def __init__(
        self,
        metrics: RecordMetrics,
        *,
        ready: Callable[[], bool] | None = None,
        status: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.metrics = metrics
        self._ready = ready or (lambda: True)
        self._status = status or (lambda: {})
        self._runner: web.AppRunner | None = None
        self._rendering: asyncio.Future[bytes] | None = None
        self._body: bytes | None = None
        self._body_at = 0.0
        self.host = ""
        self.port = 0

    def status_from(self, status: Callable[[], dict[str, Any]]) -> None:
        """Serve ``status()`` at ``/status`` from now on (the owner may be made after the server)."""
        self._status = status

    def app(self) -> web.Application:
        """The routes, for embedding or testing."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/status", self._status_json)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host:port`` (0 picks a free port); returns the base URL."""
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        try:
            await site.start()
        except OSError as e:
            await self._runner.cleanup()
            self._runner = None
            raise OSError(f"cannot serve metrics on {host}:{port}: {e.strerror or e}") from e
        addresses = self._runner.addresses
        self.host, self.port = host, int(addresses[0][1]) if addresses else port
        logger.info("metrics endpoint up", url=self.url)
        return self.url

    @property
    def running(self) -> bool:
        """Whether ``start`` has bound the address and the server is serving."""
        return self._runner is not None

    @property
    def url(self) -> str:
        """Base URL of the running server."""
        return f"http://{self.host}:{self.port}"

    async def close(self) -> None:
        """Stop serving; safe to call twice."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, _: web.Request) -> web.Response:
        body = await self.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def exposition(self) -> bytes:
        """The ``/metrics`` body: at most one render at a time, shared by every scrape that waits for it.

        Gauges are refreshed on the event loop (they read state the loop writes), then the text is
        generated on a worker thread, so a crowd of scrapers costs one render per ``RENDER_REUSE_S``
        and the loop keeps serving probes meanwhile.
        """
        now = time.monotonic()
        if self._body is not None and now - self._body_at < RENDER_REUSE_S:
            return self._body
        if self._rendering is None:
            self._rendering = asyncio.ensure_future(self._render())
        return await asyncio.shield(self._rendering)

    async def _render(self) -> bytes:
        try:
            self.metrics.refresh()
            body = await asyncio.to_thread(generate_latest, self.metrics.registry)
            self._body, self._body_at = body, time.monotonic()
            return body
        finally:
            self._rendering = None

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, _: web.Request) -> web.Response:
        ready = self._ready()
        return web.Response(text="ready\n" if ready else "not ready\n", status=200 if ready else 503)

    async def _status_json(self, _: web.Request) -> web.Response:
        return web.Response(text=json.dumps(self._status(), default=str), content_type="application/json")
