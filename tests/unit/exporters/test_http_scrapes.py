"""A crowd of scrapers costs one render: concurrent scrapes share it, and the loop is never held for the
text generation (it runs on a worker thread)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from exporters.http import RENDER_REUSE_S, MetricsServer
from exporters.prometheus import RecordMetrics


async def test_concurrent_scrapes_share_one_render() -> None:
    metrics = RecordMetrics(version="t")
    refreshes = []
    real = metrics.refresh

    def counted() -> None:
        refreshes.append(threading.get_ident())
        real()

    metrics.refresh = counted  # type: ignore[method-assign]
    server = MetricsServer(metrics)
    bodies = await asyncio.gather(*(server.exposition() for _ in range(100)))
    assert len(refreshes) == 1 and len(set(bodies)) == 1
    assert b"infermeter" in bodies[0]
    await asyncio.sleep(RENDER_REUSE_S + 0.05)
    await server.exposition()
    assert len(refreshes) == 2  # a later scrape sees fresh figures


async def test_the_loop_runs_while_the_text_is_generated(monkeypatch: pytest.MonkeyPatch) -> None:
    metrics = RecordMetrics(version="t")
    loop_thread = threading.get_ident()
    seen: list[int] = []
    import exporters.http as http

    real = http.generate_latest

    def slow(registry: object) -> bytes:
        seen.append(threading.get_ident())
        threading.Event().wait(0.3)
        return real(registry)  # type: ignore[arg-type]

    monkeypatch.setattr(http, "generate_latest", slow)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    await MetricsServer(metrics).exposition()
    ticker.cancel()
    assert seen and seen[0] != loop_thread
    assert ticks >= 10  # the loop went on turning through the 300 ms render
