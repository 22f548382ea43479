"""Per-scenario summary of a run (method §1–§3): steady state only, degraded records left out.

Success rate, degraded reasons and the warmup ratio are figures of their own; every latency figure is a
distribution over ok steady records.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from agent.core.arrivals import burstiness_of
from agent.core.record import RequestRecord, meets_slo
from analysis.energy import energy_summary
from analysis.results import SUMMARY_SCHEMA_VERSION, RunSummary, ScenarioSummary
from analysis.stats import describe, median

__all__ = [
    "WARMUP_RATIO_LIMIT",
    "goodput",
    "meets_slo",
    "summarize",
    "summarize_stages",
]

#: method §2/§8: a warmup median more than ten times the steady median calls for a warm pool.
WARMUP_RATIO_LIMIT = 10.0


def summarize(
    records: Iterable[RequestRecord],
    targets: dict[str, dict[str, Any]] | None = None,
    run_dir: Path | None = None,
) -> RunSummary:
    """Summaries keyed by scenario; ``targets`` maps scenario → {prompt_tokens, output_tokens}.

    With ``run_dir``, the run's energy block (macro windows, request-window coverage) is added.
    """
    by_scenario: dict[str, list[RequestRecord]] = defaultdict(list)
    everything: list[RequestRecord] = []
    for r in records:
        by_scenario[r.scenario].append(r)
        everything.append(r)
    targets = targets or {}
    out: dict[str, Any] = {
        "schema_version": SUMMARY_SCHEMA_VERSION,
        "scenarios": {name: _scenario(recs, targets.get(name, {})) for name, recs in by_scenario.items()},
    }
    if run_dir is not None:
        energy = energy_summary(run_dir, everything)
        if energy is not None:
            out["energy"] = energy
    return RunSummary.model_validate(out)


def summarize_stages(
    records: Iterable[RequestRecord], targets: dict[str, dict[str, Any]] | None = None
) -> dict[str, ScenarioSummary]:
    """One scenario summary per load stage (sweep stages), keyed by stage label, in first-seen order."""
    by_stage: dict[str, list[RequestRecord]] = defaultdict(list)
    for r in records:
        by_stage[r.load_stage or ""].append(r)
    targets = targets or {}
    out: dict[str, ScenarioSummary] = {}
    for label, recs in by_stage.items():
        target = targets.get(recs[0].scenario, {})
        out[label] = ScenarioSummary.model_validate(_scenario(recs, target))
    return out


def _scenario(recs: list[RequestRecord], target: dict[str, Any]) -> dict[str, Any]:
    steady = [r for r in recs if r.stage == "steady"]
    all_ok = [r for r in steady if r.status == "ok"]
    ok = [r for r in all_ok if not r.cold_start]
    cold = [r for r in all_ok if r.cold_start]
    warm_ok = [r for r in recs if r.is_warmup and r.status == "ok"]
    reasons = Counter(r.reason or "unknown" for r in steady if r.status == "degraded")
    return {
        "requests": {
            "steady": len(steady),
            "ok": len(all_ok),
            "degraded": len(steady) - len(all_ok),
            "success_rate": len(all_ok) / len(steady) if steady else None,
            "cold_start": len(cold),
            "degraded_by_reason": dict(sorted(reasons.items())),
            "warmup": sum(1 for r in recs if r.is_warmup),
            "interrupted": sum(1 for r in recs if r.reason == "interrupted"),
        },
        "latency_ms": {
            "ttft": describe(r.ttft_ms for r in ok),
            "itl": describe(itertools.chain.from_iterable(r.itl_ms for r in ok)),
            "tpot": describe(r.tpot_ms for r in ok),
            "e2e": describe(r.e2e_ms for r in ok),
        },
        "native_ms": {
            "prefill": describe(r.prefill_ms for r in ok),
            "decode": describe(r.decode_ms for r in ok),
            "load": describe(r.load_ms for r in ok),
            "ttft": describe(r.native_ttft_ms for r in ok),
            "queue": describe(r.queue_ms for r in ok),
        },
        "cold_start": {
            "n": len(cold),
            "load_ms": describe(r.load_ms for r in cold),
            "ttft_ms": describe(r.ttft_ms for r in cold),
            "e2e_ms": describe(r.e2e_ms for r in cold),
        },
        "goodput": goodput(steady, target.get("slo") or {}),
        "load": _load(steady, target.get("load") or {}),
        "throughput": _throughput(ok),
        "overhead_pct": describe(r.overhead_pct for r in ok),
        "decode_fraction": describe(r.decode_fraction for r in ok),
        "warmup": _warmup(warm_ok, ok),
        "tokens": _tokens(ok, target),
    }


def goodput(steady: list[RequestRecord], slo: dict[str, Any]) -> dict[str, Any] | None:
    """Share of steady requests meeting the SLOs; degraded requests count as misses, never drop out."""
    limits = {k: slo.get(k) for k in ("ttft_ms", "tpot_ms", "e2e_ms") if slo.get(k) is not None}
    if not limits or not steady:
        return None
    met = sum(1 for r in steady if meets_slo(r, limits))
    window = _window_s(steady)
    return {
        "slo": limits,
        "met": met,
        "of": len(steady),
        "share": met / len(steady),
        "requests_per_s": met / window if window else None,
    }


def _window_s(recs: list[RequestRecord]) -> float | None:
    ends = [r.intended_offset_ms + r.e2e_ms for r in recs if r.e2e_ms is not None]
    if not ends:
        return None
    window = (max(ends) - min(r.intended_offset_ms for r in recs)) / 1000
    return window if window > 0 else None


def _rate(offsets_ms: list[float]) -> float | None:
    if len(offsets_ms) < 2:
        return None
    span = (max(offsets_ms) - min(offsets_ms)) / 1000
    return (len(offsets_ms) - 1) / span if span > 0 else None


def _load(steady: list[RequestRecord], load: dict[str, Any]) -> dict[str, Any] | None:
    """Rate fidelity of an open-loop stage: requested, scheduled and achieved rate, schedule lag."""
    target = next((r.target_rate for r in steady if r.target_rate is not None), None)
    if target is None and load.get("arrival") in (None, "closed"):
        return None
    intended = [r.intended_offset_ms for r in steady]
    sent = [r.sent_offset_ms for r in steady]
    lag = describe(r.schedule_lag_ms for r in steady)
    achieved = _rate(sent)
    scheduled = _rate(intended)
    limit = load.get("lag_limit_ms")
    trustworthy = None if lag is None or limit is None else lag["p99"] <= limit
    return {
        "arrival": load.get("arrival", "trace"),
        "burstiness_requested": load.get("burstiness") if load.get("arrival") == "gamma" else None,
        "burstiness_measured": burstiness_of([t / 1000 for t in intended]),
        "rate_requested": target,
        "rate_scheduled": scheduled,
        "rate_achieved": achieved,
        "rate_error_pct": (achieved / target - 1) * 100 if achieved and target else None,
        "rate_error_vs_schedule_pct": (achieved / scheduled - 1) * 100 if achieved and scheduled else None,
        "schedule_lag_ms": lag,
        "lag_limit_ms": limit,
        "trustworthy": trustworthy,
        "max_concurrency": load.get("max_concurrency"),
    }


def _throughput(ok: list[RequestRecord]) -> dict[str, Any]:
    tokens = sum(r.output_tokens or 0 for r in ok)
    prompt_tokens = sum(r.prompt_tokens or 0 for r in ok)
    decode_s = sum((r.decode_ms or 0.0) for r in ok if r.decode_ms is not None) / 1000
    native_tokens = sum(r.output_tokens or 0 for r in ok if r.decode_ms is not None)
    out: dict[str, Any] = {
        "native_tok_s_per_request": describe(r.native_tok_s for r in ok),
        "wall_tok_s_per_request": describe(r.wall_tok_s for r in ok),
        "native_tok_s_aggregate": native_tokens / decode_s if decode_s > 0 else None,
        "output_tokens": tokens,
        "prompt_tokens": prompt_tokens,
        "window_s": None,
        "output_tok_s": None,
        "prompt_tok_s": None,
        "requests_per_s": None,
    }
    window_s = _window_s(ok)
    if window_s:
        out.update(
            window_s=window_s,
            output_tok_s=tokens / window_s,
            prompt_tok_s=prompt_tokens / window_s,
            requests_per_s=len(ok) / window_s,
        )
    return out


def _warmup(warm_ok: list[RequestRecord], ok: list[RequestRecord]) -> dict[str, Any]:
    warm_med = median(r.e2e_ms for r in warm_ok)
    steady_med = median(r.e2e_ms for r in ok)
    ratio = warm_med / steady_med if warm_med is not None and steady_med else None
    return {
        "n": len(warm_ok),
        "median_e2e_ms": warm_med,
        "steady_median_e2e_ms": steady_med,
        "ratio": ratio,
        "needs_warm_pool": ratio is not None and ratio > WARMUP_RATIO_LIMIT,
    }


def _tokens(ok: list[RequestRecord], target: dict[str, Any]) -> dict[str, Any]:
    prompt = describe(r.prompt_tokens for r in ok)
    output = describe(r.output_tokens for r in ok)
    return {
        "prompt": prompt,
        "prompt_target": target.get("prompt_tokens"),
        "output": output,
        "output_target": target.get("output_tokens"),
        "early_stop": sum(1 for r in ok if r.early_stop),
        "source": dict(Counter(r.token_source or "unknown" for r in ok)),
        "cached_prompt_tokens": sum(r.cached_prompt_tokens or 0 for r in ok),
        "server_vs_chunk_mismatch": sum(
            1 for r in ok if r.token_source == "server" and r.output_tokens != r.chunks
        ),
    }
