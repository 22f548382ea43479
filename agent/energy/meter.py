"""The power poller and the run's energy meter.

The poller is a thread at Δt, off the event loop; the meter holds the idle baseline and computes the
per-request and per-phase windows, the macro windows per stage, and the poller's own quality figures.
"""

from __future__ import annotations

import bisect
import statistics
import threading
import time
from pathlib import Path

import structlog

from agent.energy.base import (
    Baseline,
    EnergyError,
    EnergyWindow,
    PowerSample,
    PowerSource,
    baseline_from,
    window,
)

__all__ = ["EnergyMeter", "PowerPoller"]

logger = structlog.get_logger(__name__)


class PowerPoller:
    """Reads ``source`` every ``interval_s`` on a daemon thread into a bounded, time-ordered buffer."""

    def __init__(self, source: PowerSource, interval_s: float = 0.1, *, max_ticks: int = 100_000) -> None:
        self.source = source
        self.interval_s = interval_s
        self.max_ticks = max_ticks
        self._samples: list[PowerSample] = []
        self._times: list[int] = []
        self._periods_ns: list[int] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = 0
        self.last_error: str | None = None
        #: CPU time the polling thread itself used (its own cost, reported in ``quality``)
        self.cpu_ns = 0

    def start(self) -> None:
        """Begin polling (no-op when the source has no GPU)."""
        if self._thread is None and self.source.gpus():
            self._thread = threading.Thread(target=self._run, name="power-poller", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop and join the thread; safe to call twice."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        step = int(self.interval_s * 1e9)
        next_ns = time.perf_counter_ns()
        last: int | None = None
        while not self._stop.is_set():
            cpu0 = time.thread_time_ns()
            try:
                batch = self.source.read()
            except EnergyError as e:
                self.errors += 1
                self.last_error = str(e)
                batch = []
            now = time.perf_counter_ns()
            with self._lock:
                if last is not None:
                    self._periods_ns.append(now - last)
                    if len(self._periods_ns) > self.max_ticks:
                        del self._periods_ns[: self.max_ticks // 2]
                for s in batch:
                    self._samples.append(s)
                    self._times.append(s.t_ns)
                if len(self._times) > self.max_ticks * 8:
                    cut = len(self._times) // 2
                    del self._samples[:cut], self._times[:cut]
            last = now
            self.cpu_ns += time.thread_time_ns() - cpu0
            next_ns += step
            self._stop.wait(max(0.0, (next_ns - time.perf_counter_ns()) / 1e9))

    def latest(self) -> list[PowerSample]:
        """The newest sample of each GPU."""
        with self._lock:
            newest: dict[int, PowerSample] = {}
            for s in reversed(self._samples[-4 * max(1, len(self.source.gpus())) :]):
                newest.setdefault(s.gpu, s)
            return [newest[g] for g in sorted(newest)]

    def latest_ns(self) -> int | None:
        """Timestamp of the newest sample."""
        with self._lock:
            return self._times[-1] if self._times else None

    def between(self, start_ns: int, end_ns: int) -> list[PowerSample]:
        """Samples in ``[start_ns, end_ns]`` plus the nearest one on each side (for counter brackets)."""
        with self._lock:
            lo = max(0, bisect.bisect_left(self._times, start_ns) - len(self.source.gpus()))
            hi = bisect.bisect_right(self._times, end_ns) + len(self.source.gpus())
            return self._samples[lo:hi]

    def quality(self) -> dict[str, object]:
        """The poller's real period distribution and its gaps (periods > 2Δt)."""
        with self._lock:
            periods = sorted(p / 1e6 for p in self._periods_ns)
        if not periods:
            return {"interval_ms": self.interval_s * 1000, "ticks": 0, "errors": self.errors}
        return {
            "interval_ms": self.interval_s * 1000,
            "ticks": len(periods) + 1,
            "period_ms_p50": statistics.median(periods),
            "period_ms_p99": periods[min(len(periods) - 1, int(0.99 * len(periods)))],
            "gaps_over_2x": sum(1 for p in periods if p > 2 * self.interval_s * 1000),
            "cpu_ms": self.cpu_ns / 1e6,
            "errors": self.errors,
            "last_error": self.last_error,
        }


class EnergyMeter:
    """One run's energy: the source, its poller, the idle baseline, and the windows over them."""

    def __init__(
        self, source: PowerSource, *, interval_s: float = 0.1, baseline: Baseline | None = None
    ) -> None:
        self.source = source
        self.poller = PowerPoller(source, interval_s)
        self.baseline = baseline
        self.interval_s = interval_s
        #: how long a finished record may wait for the first sample after it (so counters can bracket)
        self.max_wait_s = 3 * interval_s
        self.stages: list[dict[str, object]] = []

    @property
    def unavailable(self) -> str | None:
        """Why no energy figure will be reported, or None."""
        if self.source.unavailable:
            return self.source.unavailable
        if self.baseline is None:
            return "no idle baseline: run `infermeter calibrate` or use --energy-baseline 30s"
        return None

    def calibrate(self, seconds: float) -> Baseline:
        """Sample the idle GPUs for ``seconds`` (before any load) and keep that as the baseline."""
        samples: list[PowerSample] = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            samples += self.source.read()
            time.sleep(self.interval_s)
        self.baseline = baseline_from(samples, self.source.name)
        return self.baseline

    def start(self) -> None:
        """Start polling when there is something to measure."""
        if not self.source.unavailable:
            self.poller.start()

    def stop(self) -> None:
        """Stop polling and release the source."""
        self.poller.stop()
        self.source.close()

    def ready(self, end_ns: int) -> bool:
        """Whether a sample past ``end_ns`` exists (a record waits for it so the counter can bracket)."""
        latest = self.poller.latest_ns()
        return latest is not None and latest >= end_ns

    def window(self, start_ns: int, end_ns: int) -> EnergyWindow | None:
        """The gated window, or None when energy is unavailable."""
        if self.unavailable or self.baseline is None:
            return None
        samples = self.poller.between(start_ns, end_ns)
        return window(samples, start_ns, end_ns, self.baseline, interval_s=self.interval_s)

    def request_fields(self, sent_ns: int, first_ns: int | None, end_ns: int) -> dict[str, object]:
        """Record fields: the request's window, and prefill/decode split at the first token."""
        whole = self.window(sent_ns, end_ns)
        if whole is None:
            return {}
        out: dict[str, object] = {
            "energy_j": whole.energy_j,
            "energy_quality": whole.quality,
            "energy_samples": whole.n,
            "power_delta_w": whole.delta_power_w,
        }
        if first_ns is not None:
            prefill, decode = self.window(sent_ns, first_ns), self.window(first_ns, end_ns)
            if prefill is not None and decode is not None:
                out.update(
                    prefill_energy_j=prefill.energy_j,
                    prefill_energy_quality=prefill.quality,
                    decode_energy_j=decode.energy_j,
                    decode_energy_quality=decode.quality,
                )
        return out

    def stage(self, label: str, start_ns: int, end_ns: int) -> dict[str, object] | None:
        """The macro window of one stage (what J/token is computed from), kept for ``energy.json``."""
        w = self.window(start_ns, end_ns)
        if w is None:
            return None
        row = {
            "stage": label,
            "start_ns": start_ns,
            "end_ns": end_ns,
            "duration_s": w.duration_s,
            "samples": w.n,
            "quality": w.quality,
            "mean_power_w": w.mean_power_w,
            "delta_power_w": w.delta_power_w,
            "energy_j": w.energy_j,
            "flags": list(w.flags),
        }
        self.stages.append(row)
        return row

    def write_trace(self, path: Path) -> int:
        """Every sample of the run as a replayable CSV (``timestamp_s`` from the run's clock origin)."""
        samples = self.poller.between(0, 2**63 - 1)
        with path.open("w", encoding="utf-8") as fh:
            fh.write("timestamp_s,gpu,power_w,energy_mj,util_pct,mem_used_mb,mem_total_mb,temp_c\n")
            for s in samples:
                cells = (s.power_w, s.energy_mj, s.util_pct, s.mem_used_mb, s.mem_total_mb, s.temp_c)
                fh.write(
                    f"{s.t_ns / 1e9:.6f},{s.gpu},"
                    + ",".join("" if c is None else str(c) for c in cells)
                    + "\n"
                )
        return len(samples)

    def describe(self) -> dict[str, object]:
        """The manifest's energy block."""
        if self.source.unavailable:
            return {"status": f"unavailable — {self.source.unavailable}", **self.source.describe()}
        return {
            "status": "measured" if self.baseline else f"not attributed — {self.unavailable}",
            **self.source.describe(),
            "baseline": self.baseline.to_dict() if self.baseline else None,
            "poller": self.poller.quality(),
        }
