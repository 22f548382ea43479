"""The figures infermeter reports, each declared once: its key, label, unit and which way is better.

A per-request figure comes from every ok steady record (``RequestRecord`` has a field of that name, or
``per_request`` says how it is read); a run figure is one value per run from its summary. The summary's
tables, the analyzer's comparisons, a study's cells and tests, the exporter's series, the dashboards'
panels and ``docs/metrics.md`` all read their figures from here, so a figure added here is named,
judged and shown the same way everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "COMPARED",
    "FIGURES",
    "LATENCY_TABLE",
    "PERCENTILES",
    "RUN_FIGURES",
    "Figure",
    "exported",
    "figure",
]

#: The percentiles every distribution reports (with n, mean and max).
PERCENTILES: tuple[float, ...] = (50.0, 95.0, 99.0)

Per = Literal["request", "run"]


@dataclass(frozen=True, slots=True)
class Figure:
    """One figure: how it is keyed, labelled and measured, and which direction is an improvement."""

    key: str
    label: str
    unit: str
    lower_is_better: bool
    meaning: str
    #: ``request``: one value per ok steady request; ``run``: one value per run, from its summary
    per: Per = "request"
    #: where a run's ``summary.json`` keeps its distribution (``latency_ms.ttft``), if it does
    summary: str | None = None
    #: the exporter's series for it (without the ``infermeter_`` prefix), if it has one
    exported: str | None = None
    #: compared between runs by ``analyze`` (a request figure) or between a study's variants (both)
    compared: bool = False
    #: a panel title's shorter name, where the label is long
    short: str | None = None

    @property
    def title(self) -> str:
        """The short name a panel or column shows."""
        return self.short or self.label

    @property
    def direction(self) -> str:
        """``lower`` or ``higher``: which way is better."""
        return "lower" if self.lower_is_better else "higher"


def _request(
    key: str,
    label: str,
    unit: str,
    meaning: str,
    *,
    higher: bool = False,
    summary: str | None = None,
    exported: str | None = None,
    compared: bool = True,
    short: str | None = None,
) -> Figure:
    return Figure(key, label, unit, not higher, meaning, "request", summary, exported, compared, short)


def _run(key: str, label: str, unit: str, meaning: str, *, higher: bool = False) -> Figure:
    return Figure(key, label, unit, not higher, meaning, "run", compared=True)


#: Every figure, in the order reports list them.
FIGURES: tuple[Figure, ...] = (
    _request(
        "ttft_ms",
        "TTFT",
        "ms",
        "time to the first output token, from the intended send time",
        summary="latency_ms.ttft",
        exported="ttft_seconds",
    ),
    _request(
        "tpot_ms",
        "TPOT",
        "ms",
        "time per output token after the first: (E2E − TTFT) / (tokens − 1)",
        summary="latency_ms.tpot",
        exported="tpot_seconds",
    ),
    _request(
        "itl_ms_median",
        "ITL (median per request)",
        "ms",
        "each request's median gap between chunks",
    ),
    _request(
        "itl_ms",
        "ITL (every gap)",
        "ms",
        "every gap between consecutive output chunks, pooled",
        summary="latency_ms.itl",
        exported="itl_seconds",
        compared=False,
        short="ITL",
    ),
    _request(
        "e2e_ms",
        "E2E",
        "ms",
        "end-to-end latency, from the intended send time",
        summary="latency_ms.e2e",
        exported="e2e_seconds",
    ),
    _request(
        "prefill_ms",
        "native prefill",
        "ms",
        "server-reported prompt processing time",
        summary="native_ms.prefill",
        exported="native_prefill_seconds",
    ),
    _request(
        "decode_ms",
        "native decode",
        "ms",
        "server-reported generation time",
        summary="native_ms.decode",
        exported="native_decode_seconds",
    ),
    _request(
        "wall_tok_s",
        "wall tok/s",
        "tok/s",
        "output tokens per E2E second of one request",
        higher=True,
        exported="wall_tokens_per_second",
    ),
    _request(
        "native_tok_s",
        "native tok/s",
        "tok/s",
        "output tokens per server-reported decode second",
        higher=True,
        exported="native_tokens_per_second",
    ),
    _request(
        "overhead_pct",
        "overhead",
        "%",
        "time outside native decode: (native tok/s / wall tok/s − 1)",
        summary="overhead_pct",
        exported="http_overhead_ratio",
    ),
    _request(
        "decode_fraction",
        "decode fraction",
        "ratio",
        "decode share of native prefill + decode",
        higher=True,
        summary="decode_fraction",
        exported="decode_fraction",
        compared=False,
    ),
    _request(
        "schedule_lag_ms",
        "schedule lag",
        "ms",
        "open loop: how late a request left against its schedule",
        summary="load.schedule_lag_ms",
        exported="schedule_lag_seconds",
        compared=False,
    ),
    _run(
        "output_tok_s",
        "output tok/s",
        "tok/s",
        "output tokens per second over the steady window",
        higher=True,
    ),
    _run("e2e_p95_ms", "E2E p95", "ms", "the run's 95th percentile end-to-end latency"),
    _run("success_rate", "success rate", "ratio", "ok steady requests over all steady requests", higher=True),
    _run("j_per_token", "J/token", "J", "GPU energy over the idle baseline per output token"),
)

_BY_KEY = {f.key: f for f in FIGURES}

#: The per-request figures ``analyze`` compares between runs (and a study between variants), in order.
COMPARED: tuple[Figure, ...] = tuple(f for f in FIGURES if f.per == "request" and f.compared)
#: One value per run, from its summary: a study's cell figures beside the per-request medians.
RUN_FIGURES: tuple[Figure, ...] = tuple(f for f in FIGURES if f.per == "run")
#: The rows of a run's latency table on the console, in order.
LATENCY_TABLE: tuple[Figure, ...] = tuple(
    _BY_KEY[k] for k in ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms", "prefill_ms", "decode_ms")
)


def exported(key: str) -> str:
    """The exporter's series name (without prefix) of the figure ``key``; ``KeyError`` if it has none."""
    name = figure(key).exported
    if name is None:
        raise KeyError(f"figure {key!r} has no exported series")
    return name


def figure(key: str) -> Figure:
    """The figure called ``key``; ``KeyError`` naming the known ones otherwise."""
    try:
        return _BY_KEY[key]
    except KeyError:
        raise KeyError(f"no figure {key!r}; known: {', '.join(_BY_KEY)}") from None
