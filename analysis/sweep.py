"""Sweeps: a throughput/latency curve over rising load, where it saturates, and the knee.

A stage *saturates* when its throughput rises by less than ``min_gain`` over the stage before (the server
is full: more offered load only queues), or when its p-th percentile TTFT or E2E crosses the SLO. The
*knee* is the last stage before that: the most load that still bought throughput within the SLOs.
"""

from __future__ import annotations

from agent.core.scenario import Slo
from analysis.results import (
    Distribution,
    Saturation,
    ScenarioSummary,
    ServerSummary,
    SweepCurve,
    SweepPoint,
    SweepServer,
)
from analysis.server import saturation_cause

__all__ = ["analyse", "explain_knee", "point", "saturation"]


def _pct(stats: Distribution | None, percentile: float) -> float | None:
    """The summary's percentile nearest the one asked for (summaries hold p50, p95, p99)."""
    if stats is None:
        return None
    key = min(("p50", "p95", "p99"), key=lambda k: abs(float(k[1:]) - percentile))
    return float(getattr(stats, key))


def point(label: str, value: float, summary: ScenarioSummary, percentile: float = 95.0) -> SweepPoint:
    """One stage of the curve from its scenario summary."""
    tp, lat, load = summary.throughput, summary.latency_ms, summary.load
    return SweepPoint(
        stage=label,
        load=value,
        throughput=tp.output_tok_s if tp.output_tok_s else tp.requests_per_s,
        throughput_unit="output tok/s" if tp.output_tok_s else "req/s",
        requests_per_s=tp.requests_per_s,
        success_rate=summary.requests.success_rate,
        goodput_share=summary.goodput.share if summary.goodput else None,
        ttft_ms_p50=_pct(lat.get("ttft"), 50),
        ttft_ms_pslo=_pct(lat.get("ttft"), percentile),
        tpot_ms_p50=_pct(lat.get("tpot"), 50),
        e2e_ms_pslo=_pct(lat.get("e2e"), percentile),
        rate_achieved=load.rate_achieved if load else None,
        lag_ms_p99=load.schedule_lag_ms.p99 if load and load.schedule_lag_ms else None,
        trustworthy=load.trustworthy if load else None,
    )


def saturation(points: list[SweepPoint], slo: Slo, min_gain: float) -> str | None:
    """Why the newest stage counts as saturated, or None while load still buys throughput in the SLOs."""
    if not points:
        return None
    last = points[-1]
    for limit, at, name in ((slo.ttft_ms, last.ttft_ms_pslo, "TTFT"), (slo.e2e_ms, last.e2e_ms_pslo, "E2E")):
        if limit is not None and at is not None and at > limit:
            return f"{name} p{slo.percentile:g} {at:.1f} ms > SLO {limit:g} ms"
    if last.throughput is None:
        return "no successful requests"
    if len(points) >= 2:
        prev = points[-2].throughput
        if prev and last.throughput < prev * (1 + min_gain):
            gain = (last.throughput / prev - 1) * 100
            return f"throughput rose {gain:+.1f} % (< {min_gain * 100:g} %) over the stage before"
    return None


def analyse(points: list[SweepPoint], slo: Slo, min_gain: float) -> SweepCurve:
    """The curve with the knee and where (and why) it saturated."""
    saturated_at: int | None = None
    reason: str | None = None
    for i in range(len(points)):
        why = saturation(points[: i + 1], slo, min_gain)
        if why is not None:
            saturated_at, reason = i, why
            break
    if saturated_at is None:
        knee = len(points) - 1 if points else None
    else:
        knee = saturated_at - 1 if saturated_at > 0 else None
    return SweepCurve(
        points=points,
        knee=None if knee is None else points[knee],
        saturated=None
        if saturated_at is None or reason is None
        else Saturation(stage=points[saturated_at].stage, why=reason),
    )


def explain_knee(curve: SweepCurve, server: ServerSummary | None) -> None:
    """Add to the saturated stage what the server's own series say filled up (queue, KV cache, preemption).

    The saturated stage's figures and those of the stage before it come from ``server``'s stages; each
    sweep point gains its server figures (peak waiting, peak KV use, preemptions) for the table.
    """
    if server is None or not server.stages:
        return
    by_stage = {st.stage: st for st in server.stages}
    for p in curve.points:
        st = by_stage.get(p.stage)
        if st is not None:
            p.server = SweepServer(
                waiting_peak=st.peak("waiting"),
                running_peak=st.peak("running"),
                kv_usage_peak=st.peak("kv_usage"),
                preemptions=st.preemptions,
                prefix_hit_ratio=st.prefix_hit_ratio,
            )
    sat = curve.saturated
    if sat is None:
        return
    names = [p.stage for p in curve.points]
    i = names.index(sat.stage) if sat.stage in names else -1
    before = by_stage.get(names[i - 1]) if i > 0 else None
    cause = saturation_cause(before, by_stage.get(sat.stage))
    if cause:
        sat.server = cause
