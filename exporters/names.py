"""Every Prometheus metric infermeter exports: name, type, help, labels and buckets, in one place.

Dashboards, alert rules and their tests read this catalogue; nothing else spells a metric name. A
series that carries one of the figures of ``agent.core.figures`` takes its name from that figure. Names
carry base units (``_seconds``, ``_ratio``, ``_total``); labels are bounded (backend, model, scenario,
status, reason, gpu) and never carry prompt text or request ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from agent.core.figures import exported

__all__ = [
    "ANALYZER",
    "BUCKET_GROWTH",
    "CATALOGUE",
    "GAP_BUCKETS",
    "LAG_BUCKETS",
    "LATENCY_BUCKETS",
    "PREFIX",
    "QUANTILE_ERROR_BOUND",
    "SCENARIO_LABELS",
    "MetricSpec",
    "by_name",
    "exposed_names",
]

PREFIX = "infermeter_"

#: Relative width of every latency bucket from 1 ms to 60 s: Prometheus' ``histogram_quantile`` puts a
#: quantile inside the bucket that holds it, so its error is at most the bucket's width relative to its
#: lower bound, 10 % (``QUANTILE_ERROR_BOUND``); a test holds real distributions to it.
BUCKET_GROWTH = 1.1
QUANTILE_ERROR_BOUND = BUCKET_GROWTH - 1


def _geometric(low: float, high: float, growth: float) -> tuple[float, ...]:
    """Bounds from ``low`` past ``high``, each at most ``growth`` times the last, in 4 significant digits."""
    bounds = [low]
    while bounds[-1] < high:
        step = float(f"{bounds[-1] * growth:.4g}")
        bounds.append(step if step / bounds[-1] <= growth else float(f"{bounds[-1] * growth * 0.9995:.4g}"))
    return tuple(bounds)


#: TTFT, ITL, TPOT and E2E share one set: 1 ms to 60 s in 10 % steps (116 buckets), then two coarse ones
#: so minutes-long generations do not vanish into +Inf.
LATENCY_BUCKETS: tuple[float, ...] = (*_geometric(0.001, 60.0, BUCKET_GROWTH), 120.0, 300.0)
GAP_BUCKETS: tuple[float, ...] = LATENCY_BUCKETS
#: Schedule lag is usually well under a millisecond: its buckets start at 10 µs, in the same 10 % steps.
LAG_BUCKETS: tuple[float, ...] = (*_geometric(0.00001, 60.0, BUCKET_GROWTH), 120.0, 300.0)

SCENARIO_LABELS: tuple[str, ...] = ("backend", "model", "scenario")

Kind = Literal["counter", "gauge", "histogram", "info"]


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric: its name without the ``_total``/``_bucket`` suffixes Prometheus adds."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = SCENARIO_LABELS
    buckets: tuple[float, ...] | None = None

    def exposed(self) -> tuple[str, ...]:
        """The series names a scrape shows for this metric."""
        if self.kind == "counter":
            return (f"{self.name}_total",)
        if self.kind == "histogram":
            return tuple(f"{self.name}{s}" for s in ("_bucket", "_sum", "_count"))
        if self.kind == "info":
            return (f"{self.name}_info",)
        return (self.name,)


def _h(name: str, help_: str, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> MetricSpec:
    return MetricSpec(PREFIX + name, "histogram", help_, buckets=buckets)


def _g(name: str, help_: str, labels: tuple[str, ...] = SCENARIO_LABELS) -> MetricSpec:
    return MetricSpec(PREFIX + name, "gauge", help_, labels)


def _c(name: str, help_: str, labels: tuple[str, ...] = SCENARIO_LABELS) -> MetricSpec:
    return MetricSpec(PREFIX + name, "counter", help_, labels)


TTFT = _h(exported("ttft_ms"), "Time to first output token, from the intended send time (wall clock).")
ITL = _h(exported("itl_ms"), "Every gap between consecutive output chunks (wall clock), pooled.", GAP_BUCKETS)
TPOT = _h(exported("tpot_ms"), "Per-request time per output token: (E2E - TTFT) / (tokens - 1).", GAP_BUCKETS)
E2E = _h(exported("e2e_ms"), "End-to-end request latency, from the intended send time (wall clock).")
PREFILL = _h(exported("prefill_ms"), "Server-reported prefill (prompt processing) time.")
DECODE = _h(exported("decode_ms"), "Server-reported decode (generation) time.")
SCHEDULE_LAG = _h(
    exported("schedule_lag_ms"),
    "Open loop (constant, Poisson, gamma arrivals): how late each request left against its intended time; "
    "a p99 above the scenario's lag limit makes the stage's figures untrustworthy.",
    LAG_BUCKETS,
)
REQUESTS = _c(
    "requests",
    "Finished requests by status (ok, degraded) and degraded reason ('none' when ok).",
    (*SCENARIO_LABELS, "status", "reason"),
)
PROMPT_TOKENS = _c("prompt_tokens", "Prompt tokens of ok requests, as the server or engine counted them.")
OUTPUT_TOKENS = _c("output_tokens", "Output tokens of ok requests.")
COLD_STARTS = _c("cold_starts", "Requests marked cold (model load, first request, or after an idle gap).")
SLO_MET = _c(
    "slo_met_requests",
    "Steady requests that met every objective the scenario sets (TTFT, TPOT, E2E); goodput is its rate "
    "over the request rate, degraded requests counting as misses. Only scenarios with an SLO have it.",
)
COMPILE_SECONDS = _g(
    "compile_seconds",
    "In-process torch.compile: seconds spent compiling and warming every request shape before the clock "
    "started (phase=warm), and seconds of that inside the compiler itself (phase=compiler).",
    (*SCENARIO_LABELS, "phase"),
)
COMPILED_FRAMES = _g(
    "compiled_frames",
    "In-process torch.compile: frames compiled before the clock (when=warm) and while it ran "
    "(when=measured, 0 when every shape was compiled first), and graph breaks (when=graph_breaks).",
    (*SCENARIO_LABELS, "when"),
)
DECODE_FRACTION = _g(
    exported("decode_fraction"), "Decode share of native prefill + decode over the recent window."
)
NATIVE_TOK_S = _g(
    exported("native_tok_s"), "Output tokens per second of server-reported decode time, recent window."
)
WALL_TOK_S = _g(exported("wall_tok_s"), "Mean per-request output tokens per E2E second, recent window.")
OVERHEAD = _g(
    exported("overhead_pct"),
    "Mean (native tok/s / wall tok/s - 1) over the recent window: time outside server decode.",
)
IN_FLIGHT = _g("in_flight_requests", "Requests sent and not yet finished.")
WARMUP_RATIO = _g(
    "warmup_ratio", "Median warmup E2E / median steady E2E (method §2); 1 means no warmup cost."
)
LAST_SUCCESS = _g("last_success_timestamp_seconds", "Unix time of the last ok request.")
BACKEND_UP = _g(
    "backend_up", "1 when the last probe or request reached the backend, 0 when it failed to connect."
)
WINDOW = _g("window_requests", "Requests in the recent window the window gauges are computed over.")
ENERGY = _c(
    "energy_joules",
    "Energy over the idle baseline of ok requests whose window the power samples could see (good or "
    "counter); per-request windows overlap under concurrency, so J/token comes from the summary's macro "
    "windows.",
)
GPU_ENERGY = _c(
    "gpu_energy_over_baseline_joules",
    "GPU energy over the idle baseline in macro windows between scrapes (all GPUs), counted while the "
    "load is in its steady state (warmups and the time after the load are left out, as the output-token "
    "counter leaves out warmup tokens): J/token is its rate over the output-token rate, never a sum of "
    "overlapping request windows.",
    (),
)
ENERGY_NO_DATA = _g(
    "energy_no_data_ratio", "Share of recent request windows too short for the power samples to see."
)
GPU_POWER = _g("gpu_power_watts", "Latest GPU board power reading.", ("gpu",))
GPU_UTIL = _g("gpu_utilization_ratio", "Latest GPU utilisation (0-1).", ("gpu",))
GPU_MEMORY = _g("gpu_memory_used_ratio", "Latest GPU memory used / total (0-1).", ("gpu",))
QUALITY_LABELS: tuple[str, ...] = ("model", "task", "scorer")
QUALITY_SCORE = _g(
    "quality_score",
    "Offline analyzer: mean score of the candidate run per model, task and scorer (higher is better).",
    QUALITY_LABELS,
)
QUALITY_DELTA = _g(
    "quality_delta",
    "Offline analyzer: candidate minus baseline score per model, task and scorer (drift; 0 = unchanged).",
    QUALITY_LABELS,
)
QUALITY_TIER = _g(
    "quality_tier",
    "Offline analyzer: drift tier per model and task: "
    "0 negligible, 1 acceptable, 2 concerning, 3 unacceptable.",
    ("model", "task"),
)
REGRESSION = _g(
    "regression_verdict",
    "Offline analyzer: candidate vs baseline per scenario and metric: "
    "1 worse, 0 no detectable change, -1 better (Mann-Whitney U, Holm-adjusted).",
    ("model", "scenario", "metric"),
)
ANALYSIS_TIME = _g(
    "analysis_timestamp_seconds",
    "Offline analyzer: when the published analysis was made (Unix time).",
    ("model",),
)
DAEMON_ERRORS = _c(
    "daemon_errors",
    "Daemon: failures of its own work (a sample that could not be written, a probe loop that raised), "
    "by component and target; each is logged and shown in /status.",
    ("component", "target"),
)
BUILD = MetricSpec(PREFIX + "build", "info", "infermeter version.", ("version",))

CATALOGUE: tuple[MetricSpec, ...] = (
    TTFT,
    ITL,
    TPOT,
    E2E,
    PREFILL,
    DECODE,
    SCHEDULE_LAG,
    REQUESTS,
    PROMPT_TOKENS,
    OUTPUT_TOKENS,
    COLD_STARTS,
    SLO_MET,
    COMPILE_SECONDS,
    COMPILED_FRAMES,
    DECODE_FRACTION,
    NATIVE_TOK_S,
    WALL_TOK_S,
    OVERHEAD,
    IN_FLIGHT,
    WARMUP_RATIO,
    LAST_SUCCESS,
    BACKEND_UP,
    WINDOW,
    ENERGY,
    GPU_ENERGY,
    ENERGY_NO_DATA,
    GPU_POWER,
    GPU_UTIL,
    GPU_MEMORY,
    DAEMON_ERRORS,
    BUILD,
)
#: Published by the offline analyzer (Pushgateway or node_exporter textfile), not by the agent.
ANALYZER: tuple[MetricSpec, ...] = (QUALITY_SCORE, QUALITY_DELTA, QUALITY_TIER, REGRESSION, ANALYSIS_TIME)


def by_name(name: str) -> MetricSpec:
    """The spec owning ``name`` (a base name or any exposed series name)."""
    for spec in (*CATALOGUE, *ANALYZER):
        if name == spec.name or name in spec.exposed():
            return spec
    raise KeyError(f"no infermeter metric named {name!r}")


def exposed_names() -> frozenset[str]:
    """Every series name a scrape can show (``_bucket``/``_sum``/``_count``/``_total`` included)."""
    return frozenset(n for spec in (*CATALOGUE, *ANALYZER) for n in spec.exposed())
