"""A real headless Chromium driven over the DevTools protocol: open a page, collect its console errors,
read what its figures hold, and take a screenshot. Only loopback and ``file://`` are touched.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

#: What each figure on a page holds (the series and points it says it drew), and whether the browser
#: laid its SVG out, read in the page once it has loaded.
FIGURES_JS = """JSON.stringify([...document.querySelectorAll('figure.chart')].map(p => ({
  id: p.id,
  traces: Number(p.dataset.series),
  points: Number(p.dataset.points),
  rendered: (() => { const s = p.querySelector('svg'); if (!s) return false;
    const b = s.getBoundingClientRect(); return b.width > 100 && b.height > 50
      && s.querySelectorAll('path, rect, use').length > 10; })(),
})))"""


def chromium() -> str:
    """The Chromium binary (Debian's ``chromium``; ``make tools`` installs it)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise RuntimeError("Chromium is not installed: run `make tools` (apt-get install chromium)")


@dataclass
class PageReport:
    """What a page did when it was opened."""

    errors: list[str] = field(default_factory=list)
    figures: list[dict[str, Any]] = field(default_factory=list)
    title: str = ""
    screenshot: bytes = b""
    #: what each expression asked for by ``open_page(..., probes=...)`` evaluated to
    values: dict[str, Any] = field(default_factory=dict)


class _Session:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws, self.ids = ws, itertools.count(1)
        self.events: list[dict[str, Any]] = []
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            data = json.loads(msg.data)
            if "id" in data and data["id"] in self.pending:
                self.pending.pop(data["id"]).set_result(data)
            else:
                self.events.append(data)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        n = next(self.ids)
        self.pending[n] = asyncio.get_running_loop().create_future()
        await self.ws.send_json({"id": n, "method": method, "params": params})
        reply = await asyncio.wait_for(self.pending[n], timeout=60)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return dict(reply.get("result") or {})

    async def wait_for(self, method: str, limit_s: float = 60) -> None:
        deadline = asyncio.get_running_loop().time() + limit_s
        while not any(e.get("method") == method for e in self.events):
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"no {method} within {limit_s} s")
            await asyncio.sleep(0.05)

    def errors(self) -> list[str]:
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params") or {}
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(" ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
            elif m == "Runtime.exceptionThrown":
                details = p.get("exceptionDetails") or {}
                out.append(str((details.get("exception") or {}).get("description") or details.get("text")))
            elif m == "Log.entryAdded" and (p.get("entry") or {}).get("level") == "error":
                out.append(str(p["entry"].get("text")))
        return out


def open_page(
    path: Path, *, settle_s: float = 1.5, width: int = 1280, probes: dict[str, str] | None = None
) -> PageReport:
    """Open ``path`` in a fresh headless Chromium and report what happened (and what ``probes`` read)."""
    return asyncio.run(_open(path.absolute().as_uri(), settle_s, width, probes or {}))


async def _open(url: str, settle_s: float, width: int, probes: dict[str, str]) -> PageReport:
    with tempfile.TemporaryDirectory() as profile:
        proc = await asyncio.create_subprocess_exec(
            chromium(),
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            f"--window-size={width},900",
            "about:blank",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            port = await _devtools_port(proc)
            return await _inspect(port, url, settle_s, width, probes)
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


async def _devtools_port(proc: asyncio.subprocess.Process) -> int:
    assert proc.stderr is not None
    while line := await asyncio.wait_for(proc.stderr.readline(), timeout=60):
        match = re.search(rb"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
        if match:
            return int(match.group(1))
    raise RuntimeError("Chromium exited before its DevTools endpoint was up")


async def _inspect(port: int, url: str, settle_s: float, width: int, probes: dict[str, str]) -> PageReport:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/json/list") as resp:
            pages = [t for t in await resp.json() if t.get("type") == "page"]
        async with http.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            s = _Session(ws)
            for domain in ("Runtime", "Log", "Page"):
                await s.call(f"{domain}.enable")
            await s.call("Page.navigate", url=url)
            await s.wait_for("Page.loadEventFired")
            await asyncio.sleep(settle_s)
            report = PageReport(errors=s.errors())
            value = await s.call("Runtime.evaluate", expression=FIGURES_JS, returnByValue=True)
            report.figures = json.loads(value["result"]["value"])
            title = await s.call("Runtime.evaluate", expression="document.title", returnByValue=True)
            report.title = title["result"]["value"]
            for name, expression in probes.items():
                value = await s.call("Runtime.evaluate", expression=expression, returnByValue=True)
                report.values[name] = value["result"].get("value")
            height = await s.call(
                "Runtime.evaluate", expression="document.body.scrollHeight", returnByValue=True
            )
            clip = {
                "x": 0,
                "y": 0,
                "width": width,
                "height": min(int(height["result"]["value"]), 12000),
                "scale": 1,
            }
            shot = await s.call("Page.captureScreenshot", format="png", captureBeyondViewport=True, clip=clip)
            report.screenshot = base64.b64decode(shot["data"])
            report.errors = s.errors()
            s.reader.cancel()
            return report
