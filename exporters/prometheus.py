"""Records → Prometheus metrics in an explicit registry (never the process-global one).

``RecordMetrics.observe(record)`` is the whole interface for request records: histograms and counters
update at once; the window gauges (decode fraction, tokens/s, overhead) are recomputed at each
``render()`` (each scrape) over the records of the last ``window_s`` seconds per (backend, model,
scenario), so their cost follows the scrape rate, not the request rate. Warmup records feed only the
warmup ratio and the cold-start counter; they never enter the latency histograms.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, disable_created_metrics
from prometheus_client.exposition import generate_latest

from agent.core.record import REASONS, RequestRecord, meets_slo
from exporters import names

__all__ = ["GpuReading", "RecordMetrics"]

Key = tuple[str, str, str]

#: degraded reasons whose series exist at zero from the start: every fixed one, and the HTTP statuses
#: inference servers answer with under load (any other status gets its series when it first happens)
DECLARED_REASONS = (
    *(r for r in REASONS if not r.endswith(">")),
    *(f"http_{code}" for code in (429, 500, 502, 503, 504)),
)


class _Row(NamedTuple):
    """What the window gauges need of one ok record (the record itself is not kept)."""

    t: float
    decode_ms: float | None
    output_tokens: int | None
    wall_tok_s: float | None
    decode_fraction: float | None
    overhead_pct: float | None
    energy_quality: str | None


@dataclass(slots=True)
class _Window:
    """Recent ok records' figures for one label set, bounded in time and in count."""

    span_s: float
    cap: int
    rows: deque[_Row] = field(default_factory=deque)
    warmup_e2e: deque[float] = field(default_factory=lambda: deque(maxlen=1000))
    steady_e2e: deque[float] = field(default_factory=lambda: deque(maxlen=1000))

    def add(self, now: float, r: RequestRecord) -> None:
        self.rows.append(
            _Row(
                now,
                r.decode_ms,
                r.output_tokens,
                r.wall_tok_s,
                r.decode_fraction,
                r.overhead_pct,
                r.energy_quality,
            )
        )
        if len(self.rows) > self.cap:
            self.rows.popleft()

    def prune(self, now: float) -> list[_Row]:
        while self.rows and self.rows[0].t < now - self.span_s:
            self.rows.popleft()
        return list(self.rows)


class RecordMetrics:
    """The exporter's state: every metric of ``exporters.names`` registered in ``registry``."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        window_s: float = 60.0,
        window_cap: int = 10_000,
        version: str = "unknown",
        clock: Callable[[], float] = time.time,
    ) -> None:
        # `_created` series double the series count and no dashboard or rule reads them (process-wide)
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.window_s = window_s
        self.window_cap = window_cap
        self._clock = clock
        self._windows: dict[Key, _Window] = {}
        r = self.registry

        def hist(spec: names.MetricSpec) -> Histogram:
            return Histogram(spec.name, spec.help, spec.labels, registry=r, buckets=spec.buckets or ())

        def gauge(spec: names.MetricSpec) -> Gauge:
            return Gauge(spec.name, spec.help, spec.labels, registry=r)

        def counter(spec: names.MetricSpec) -> Counter:
            return Counter(spec.name, spec.help, spec.labels, registry=r)

        self.ttft, self.itl, self.tpot = hist(names.TTFT), hist(names.ITL), hist(names.TPOT)
        self.e2e, self.prefill, self.decode = hist(names.E2E), hist(names.PREFILL), hist(names.DECODE)
        self.schedule_lag = hist(names.SCHEDULE_LAG)
        self.requests = counter(names.REQUESTS)
        self.prompt_tokens = counter(names.PROMPT_TOKENS)
        self.output_tokens = counter(names.OUTPUT_TOKENS)
        self.cold_starts = counter(names.COLD_STARTS)
        self.slo_met = counter(names.SLO_MET)
        self.compile_seconds = gauge(names.COMPILE_SECONDS)
        self.compiled_frames = gauge(names.COMPILED_FRAMES)
        self._slo: dict[Key, dict[str, float]] = {}
        self.decode_fraction = gauge(names.DECODE_FRACTION)
        self.native_tok_s = gauge(names.NATIVE_TOK_S)
        self.wall_tok_s = gauge(names.WALL_TOK_S)
        self.overhead = gauge(names.OVERHEAD)
        self.in_flight = gauge(names.IN_FLIGHT)
        self.warmup_ratio = gauge(names.WARMUP_RATIO)
        self.last_success = gauge(names.LAST_SUCCESS)
        self.backend_up = gauge(names.BACKEND_UP)
        self.window = gauge(names.WINDOW)
        self.energy = counter(names.ENERGY)
        self.energy_no_data = gauge(names.ENERGY_NO_DATA)
        self.gpu_power = gauge(names.GPU_POWER)
        self.gpu_util = gauge(names.GPU_UTIL)
        self.gpu_memory = gauge(names.GPU_MEMORY)
        self.daemon_errors = counter(names.DAEMON_ERRORS)
        self.gpu_energy = Counter(names.GPU_ENERGY.name, names.GPU_ENERGY.help, registry=r)
        self._energy: Callable[[int, int], float | None] | None = None
        self._energy_since: int | None = None
        self._energy_now: Callable[[], int | None] = lambda: None
        self._gpus: Callable[[], Sequence[GpuReading]] | None = None
        Info(names.BUILD.name, names.BUILD.help, registry=r).info({"version": version})

    # ---- request records ------------------------------------------------------------------------

    def observe(self, record: RequestRecord) -> None:
        """Fold one finished request record into every metric it touches."""
        key: Key = (record.backend, record.model, record.scenario)
        window = self._window(key)
        if record.cold_start:  # cold requests count in every stage: warmup is where they usually are
            self.cold_starts.labels(*key).inc()
        if record.is_warmup:
            if record.status == "ok" and record.e2e_ms is not None:
                window.warmup_e2e.append(record.e2e_ms)
                self._set_warmup_ratio(key, window)
            return
        self.requests.labels(*key, record.status, record.reason or "none").inc()
        slo = self._slo.get(key)
        if slo is not None and meets_slo(record, slo):
            self.slo_met.labels(*key).inc()
        if record.target_rate is not None:  # open loop: every request sent, ok or not, left at a time
            _observe_ms(self.schedule_lag, key, record.schedule_lag_ms)
        if record.status != "ok":
            return
        now = self._clock()
        self.last_success.labels(*key).set(now)
        _observe_ms(self.ttft, key, record.ttft_ms)
        _observe_ms(self.tpot, key, record.tpot_ms)
        _observe_ms(self.e2e, key, record.e2e_ms)
        _observe_ms(self.prefill, key, record.prefill_ms)
        _observe_ms(self.decode, key, record.decode_ms)
        if record.itl_ms:
            child = self.itl.labels(*key)
            for gap in record.itl_ms:
                child.observe(gap / 1000)
        if record.prompt_tokens:
            self.prompt_tokens.labels(*key).inc(record.prompt_tokens)
        if record.output_tokens:
            self.output_tokens.labels(*key).inc(record.output_tokens)
        if record.energy_j is not None and record.energy_quality in ("good", "counter"):
            self.energy.labels(*key).inc(record.energy_j)
        if record.e2e_ms is not None and not record.cold_start:
            window.steady_e2e.append(record.e2e_ms)
            self._set_warmup_ratio(key, window)
        window.add(now, record)

    def declare(
        self,
        backend: str,
        model: str,
        scenario: str,
        *,
        open_loop: bool = False,
        slo: Mapping[str, float | None] | None = None,
    ) -> None:
        """Create a label set's counters and histograms at zero before its first request.

        ``slo`` (the scenario's TTFT/TPOT/E2E objectives in ms) makes the label set count goodput.

        Prometheus reads a series' first scrape as its starting point, so a counter born at 1 makes
        ``rate`` and ``increase`` miss that first step: a short run's only cold start would show as none,
        and every rate would leave out what happened before the first scrape.
        """
        key: Key = (backend, model, scenario)
        self.requests.labels(*key, "ok", "none")
        for reason in DECLARED_REASONS:  # an HTTP status is declared when it first happens
            self.requests.labels(*key, "degraded", reason)
        for metric in (self.prompt_tokens, self.output_tokens, self.cold_starts, self.energy):
            metric.labels(*key)
        for hist in (self.ttft, self.itl, self.tpot, self.e2e, self.prefill, self.decode):
            hist.labels(*key)
        if open_loop:
            self.schedule_lag.labels(*key)
        limits = {
            k: float(v) for k in ("ttft_ms", "tpot_ms", "e2e_ms") if (v := (slo or {}).get(k)) is not None
        }
        if limits:
            self._slo[key] = limits
            self.slo_met.labels(*key)

    def set_compile(self, backend: str, model: str, scenario: str, evidence: Mapping[str, Any]) -> None:
        """Compile evidence of an in-process backend (its manifest ``compile`` block), as gauges."""
        warm = evidence.get("warm") or {}
        if not warm:
            return
        key = (backend, model, scenario)
        self.compile_seconds.labels(*key, "warm").set(warm["ms"] / 1000)
        self.compile_seconds.labels(*key, "compiler").set(warm["compile_s"])
        self.compiled_frames.labels(*key, "warm").set(warm["frames_compiled"])
        self.compiled_frames.labels(*key, "measured").set(evidence.get("compiles_measured") or 0)
        self.compiled_frames.labels(*key, "graph_breaks").set(evidence.get("graph_breaks") or 0)

    def set_backend_up(self, backend: str, model: str, scenario: str, up: bool) -> None:
        """Whether the backend answered (set by a daemon probe or a run's start)."""
        self.backend_up.labels(backend, model, scenario).set(1 if up else 0)

    def track_in_flight(self, backend: str, model: str, scenario: str, read: Callable[[], float]) -> None:
        """Read the in-flight count from ``read`` at every scrape."""
        self.in_flight.labels(backend, model, scenario).set_function(read)

    def track_gpus(self, read: Callable[[], Sequence[GpuReading]]) -> None:
        """Read the latest GPU readings from ``read`` at every scrape."""
        self._gpus = read

    @property
    def energy_since_ns(self) -> int | None:
        """Where the GPU energy count has got to (None until ``track_energy``)."""
        return self._energy_since

    def track_energy(
        self,
        since_ns: int,
        energy_j: Callable[[int, int], float | None],
        now_ns: Callable[[], int | None],
    ) -> None:
        """Count GPU energy over the baseline in macro windows, from ``since_ns`` on.

        At each scrape, ``energy_j(last, now)`` is the window since the previous one; None (the samples
        cannot see it) leaves that stretch uncounted.
        """
        self._energy, self._energy_since, self._energy_now = energy_j, since_ns, now_ns

    def refresh(self) -> None:
        """Recompute the window and GPU gauges (``render`` does this before every exposition)."""
        self._count_energy()
        now = self._clock()
        for key, window in self._windows.items():
            self._set_window_gauges(key, window.prune(now))
        for g in self._gpus() if self._gpus is not None else []:
            gpu = str(g.gpu)
            _set_or_drop(self.gpu_power, (gpu,), g.power_w)
            _set_or_drop(self.gpu_util, (gpu,), g.util_pct / 100 if g.util_pct is not None else None)
            used, total = g.mem_used_mb, g.mem_total_mb
            _set_or_drop(self.gpu_memory, (gpu,), used / total if used is not None and total else None)

    def _count_energy(self) -> None:
        if self._energy is None or self._energy_since is None:
            return
        end = self._energy_now()
        if end is None or end <= self._energy_since:
            return
        joules = self._energy(self._energy_since, end)
        self._energy_since = end
        if joules is not None and joules > 0:
            self.gpu_energy.inc(joules)

    def render(self) -> bytes:
        """The text exposition of the registry (what ``/metrics`` serves)."""
        self.refresh()
        return generate_latest(self.registry)

    # ---- window gauges --------------------------------------------------------------------------

    def _window(self, key: Key) -> _Window:
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = _Window(self.window_s, self.window_cap)
        return window

    def _set_window_gauges(self, key: Key, rows: list[_Row]) -> None:
        """Set each window gauge, or drop its series when the window has nothing to say."""
        self.window.labels(*key).set(len(rows))
        decode_s = sum(r.decode_ms for r in rows if r.decode_ms is not None) / 1000
        native_tokens = sum(r.output_tokens or 0 for r in rows if r.decode_ms is not None)
        wall = [r.wall_tok_s for r in rows if r.wall_tok_s is not None]
        fractions = [r.decode_fraction for r in rows if r.decode_fraction is not None]
        overheads = [r.overhead_pct / 100 for r in rows if r.overhead_pct is not None]
        _set_or_drop(self.native_tok_s, key, native_tokens / decode_s if decode_s > 0 else None)
        _set_or_drop(self.wall_tok_s, key, statistics.fmean(wall) if wall else None)
        _set_or_drop(self.decode_fraction, key, statistics.fmean(fractions) if fractions else None)
        _set_or_drop(self.overhead, key, statistics.fmean(overheads) if overheads else None)
        seen = [r.energy_quality for r in rows if r.energy_quality is not None]
        no_data = sum(1 for q in seen if q == "no_data") / len(seen) if seen else None
        _set_or_drop(self.energy_no_data, key, no_data)

    def _set_warmup_ratio(self, key: Key, window: _Window) -> None:
        if window.warmup_e2e and window.steady_e2e:
            steady = statistics.median(window.steady_e2e)
            if steady > 0:
                self.warmup_ratio.labels(*key).set(statistics.median(window.warmup_e2e) / steady)


def _observe_ms(hist: Histogram, key: Key, value_ms: float | None) -> None:
    if value_ms is not None:
        hist.labels(*key).observe(value_ms / 1000)


class GpuReading(Protocol):
    """What the GPU gauges read from a power sample."""

    @property
    def gpu(self) -> int:
        """GPU index."""

    @property
    def power_w(self) -> float | None:
        """Board power."""

    @property
    def util_pct(self) -> float | None:
        """Utilisation, percent."""

    @property
    def mem_used_mb(self) -> float | None:
        """Memory used."""

    @property
    def mem_total_mb(self) -> float | None:
        """Memory total."""


def _set_or_drop(gauge: Gauge, key: tuple[str, ...], value: float | None) -> None:
    """A stale window figure is worse than none: without a value the series goes away."""
    if value is not None:
        gauge.labels(*key).set(value)
    else:
        with contextlib.suppress(KeyError):
            gauge.remove(*key)
