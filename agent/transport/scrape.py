"""Scrape inference servers' Prometheus endpoints beside a run, into the run's time-series file.

A thread, off the event loop, reads each endpoint every ``interval_s`` with a plain blocking client
(one small GET a second costs the client next to nothing), keeps the samples ``parse_exposition``
keeps, and appends to ``server_metrics.csv`` the series whose value changed since that endpoint's last
scrape. ``mark()`` scrapes at once and writes every series: the launch calls it at each stage's start
and end, so a stage's window is bracketed whatever the interval. Every write is flushed, so a run
killed with ``kill -9`` keeps all but the scrape in progress.

The cost is bounded: a response above ``MAX_BODY_BYTES`` or with more than ``MAX_SAMPLES`` kept
samples is cut there and counted; each endpoint's scrape time and errors go to the manifest, so the
age of a window's edges is known.
"""

from __future__ import annotations

import csv
import statistics
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import structlog

from agent.core.errors import ConfigError
from agent.core.server_metrics import FILE_HEADER, Sample, detect_engine, parse_exposition, series_spec

__all__ = ["MAX_BODY_BYTES", "MAX_SAMPLES", "Endpoint", "ServerScraper", "fetch", "metrics_url_of"]

logger = structlog.get_logger(__name__)

MAX_BODY_BYTES = 16 * 2**20
MAX_SAMPLES = 20_000
#: scrape times kept per endpoint for the manifest's percentiles
_KEEP_TIMES = 4096


def _gauges(samples: list[Sample]) -> dict[str, float]:
    """The scrape's running, waiting and KV-cache gauges in common concepts (summed over label sets)."""
    out: dict[str, float] = {}
    for s in samples:
        spec = series_spec(s.name)
        if spec is not None and spec.kind == "gauge" and spec.concept in ("running", "waiting", "kv_usage"):
            out[spec.concept] = out.get(spec.concept, 0.0) + s.value
    return out


def _yield() -> None:
    """Let the event loop's thread run (the parse holds the interpreter lock between these)."""
    time.sleep(0)


def metrics_url_of(base_url: str) -> str:
    """The ``/metrics`` URL at the root of an OpenAI-compatible base URL (``…/v1`` dropped)."""
    parts = urlsplit(base_url)
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[: -len("/v1")]
    return urlunsplit((parts.scheme, parts.netloc, path + "/metrics", "", ""))


def fetch(url: str, timeout_s: float) -> str:
    """GET ``url`` and return its text (at most ``MAX_BODY_BYTES``); ``ConfigError`` says why not."""
    request = urllib.request.Request(url, headers={"Accept": "text/plain"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            body: bytes = response.read(MAX_BODY_BYTES + 1)
    except urllib.error.HTTPError as e:
        raise ConfigError(f"{url} answered HTTP {e.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise ConfigError(f"{url} could not be read ({reason})") from None
    return body[:MAX_BODY_BYTES].decode("utf-8", errors="replace")


@dataclass(slots=True)
class Endpoint:
    """One scraped endpoint: its URL, whether it was given or discovered, and how its scrapes went."""

    url: str
    given: bool
    engine: str | None = None
    scrapes: int = 0
    errors: int = 0
    cut: int = 0
    last_error: str | None = None
    series: int = 0
    #: the latest scrape's gauges in common concepts (running, waiting, kv_usage), for a live status
    latest: dict[str, float] = field(default_factory=dict)
    times_ms: list[float] = field(default_factory=list)
    #: each series' last written value, to write only changes
    last: dict[tuple[str, str], float] = field(default_factory=dict)

    def describe(self) -> dict[str, object]:
        """Manifest facts: engine, scrapes, errors and the scrape time distribution."""
        times = sorted(self.times_ms)
        out: dict[str, object] = {
            "url": self.url,
            "given": self.given,
            "engine": self.engine,
            "scrapes": self.scrapes,
            "errors": self.errors,
            "series": self.series,
        }
        if times:
            out["scrape_ms_p50"] = round(statistics.median(times), 2)
            out["scrape_ms_max"] = round(times[-1], 2)
        if self.cut:
            out["cut_scrapes"] = self.cut
        if self.latest:
            out["latest"] = self.latest
        if self.last_error:
            out["last_error"] = self.last_error
        return out


class ServerScraper:
    """Reads every endpoint each ``interval_s`` on a daemon thread into ``path`` (CSV, changes only)."""

    def __init__(
        self,
        endpoints: list[Endpoint],
        path: Path,
        *,
        interval_s: float = 1.0,
        timeout_s: float = 2.0,
        max_bytes: int | None = None,
    ) -> None:
        self.endpoints = endpoints
        #: past this size the file moves to ``<name>.1.csv`` and a new one starts with a full scrape
        self.max_bytes = max_bytes
        self._full_next = False
        self.path = path
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.rows = 0
        self.cpu_ns = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fh = path.open("a", newline="", encoding="utf-8")
        self._csv = csv.writer(self._fh)
        if self._fh.tell() == 0:
            self._csv.writerow(FILE_HEADER)
            self._fh.flush()

    @classmethod
    def probe(cls, url: str, timeout_s: float = 2.0) -> str | None:
        """Why ``url`` is not a Prometheus endpoint worth scraping, or None when it is."""
        try:
            samples = parse_exposition(fetch(url, timeout_s))
        except ConfigError as e:
            return str(e)
        return None if samples else f"{url} serves no metrics"

    def start(self) -> None:
        """Scrape once now (every series), then every ``interval_s`` on the thread."""
        self.mark()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="server-scraper", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        next_t = time.monotonic() + self.interval_s
        while not self._stop.wait(max(0.0, next_t - time.monotonic())):
            self.scrape(full=False)
            next_t += self.interval_s
            if next_t < time.monotonic():  # a slow server: skip the missed ticks, never pile up
                next_t = time.monotonic() + self.interval_s

    def mark(self) -> None:
        """Scrape every endpoint now and write every series (a window's edge)."""
        self.scrape(full=True)

    def scrape(self, *, full: bool) -> None:
        """One scrape of every endpoint."""
        cpu0 = time.thread_time_ns()
        with self._lock:
            if self._fh.closed:
                return
            full, self._full_next = full or self._full_next, False
            for ep in self.endpoints:
                self._scrape_one(ep, full)
            self._fh.flush()
            if self.max_bytes is not None and self._fh.tell() > self.max_bytes:
                self._rotate()
        self.cpu_ns += time.thread_time_ns() - cpu0

    def _scrape_one(self, ep: Endpoint, full: bool) -> None:
        t0 = time.perf_counter()
        t_unix = time.time()
        try:
            text = fetch(ep.url, self.timeout_s)
            samples = parse_exposition(text, pause=_yield)
        except ConfigError as e:
            ep.errors += 1
            ep.last_error = str(e)
            return
        ep.scrapes += 1
        if len(ep.times_ms) < _KEEP_TIMES:
            ep.times_ms.append((time.perf_counter() - t0) * 1000)
        if len(samples) > MAX_SAMPLES:
            samples = samples[:MAX_SAMPLES]
            ep.cut += 1
        if ep.engine is None:
            ep.engine = detect_engine(s.name for s in samples)
        ep.series = len(samples)
        ep.latest = _gauges(samples)
        self._write(ep, samples, f"{t_unix:.3f}", full)

    def _rotate(self) -> None:
        self._fh.close()
        self.path.replace(self.path.with_suffix(".1.csv"))
        self._fh = self.path.open("a", newline="", encoding="utf-8")
        self._csv = csv.writer(self._fh)
        self._csv.writerow(FILE_HEADER)
        self._fh.flush()
        self._full_next = True  # the new file opens with every series' value

    def _write(self, ep: Endpoint, samples: list[Sample], t: str, full: bool) -> None:
        last = ep.last
        for s in samples:
            key = (s.name, s.labels)
            if full or last.get(key) != s.value:
                last[key] = s.value
                self._csv.writerow((t, ep.url, s.name, s.labels, repr(s.value)))
                self.rows += 1

    def stop(self) -> None:
        """A last full scrape, then stop the thread and close the file; safe to call twice."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout_s * len(self.endpoints) + 5)
            self._thread = None
        if not self._fh.closed:
            self.mark()
            with self._lock:
                self._fh.close()

    def describe(self) -> dict[str, object]:
        """The manifest's ``server_metrics`` block."""
        return {
            "file": self.path.name,
            "interval_s": self.interval_s,
            "rows": self.rows,
            "cpu_ms": round(self.cpu_ns / 1e6, 1),
            "endpoints": [ep.describe() for ep in self.endpoints],
        }
