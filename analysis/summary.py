"""Per-scenario summary of a run (method §1–§3): steady state only, degraded records left out.

Success rate, degraded reasons and the warmup ratio are figures of their own; every latency figure is a
distribution over ok steady records.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

from agent.core.arrivals import burstiness_of
from agent.core.record import RequestRecord, meets_slo
from agent.core.scenario import Targets
from analysis.energy import energy_summary
from analysis.results import (
    SUMMARY_SCHEMA_VERSION,
    ColdStarts,
    Conversations,
    Goodput,
    LengthCheck,
    LoadFidelity,
    PrefixCache,
    Requests,
    RunSummary,
    ScenarioSummary,
    Throughput,
    Tokens,
    TurnStats,
    Warmup,
    Workload,
)
from analysis.server import server_summary
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
    targets: dict[str, Targets] | None = None,
    run_dir: Path | None = None,
) -> RunSummary:
    """Summaries keyed by scenario, each held against its scenario's ``targets`` where they are known.

    With ``run_dir``, the run's energy block (macro windows, request-window coverage) and the server's
    own figures (from its scraped metrics) are added.
    """
    by_scenario: dict[str, list[RequestRecord]] = defaultdict(list)
    everything: list[RequestRecord] = []
    for r in records:
        by_scenario[r.scenario].append(r)
        everything.append(r)
    targets = targets or {}
    out = RunSummary(
        schema_version=SUMMARY_SCHEMA_VERSION,
        scenarios={name: _scenario(recs, targets.get(name, _NONE)) for name, recs in by_scenario.items()},
    )
    if run_dir is not None:
        energy = energy_summary(run_dir, everything)
        if energy is not None:
            out.energy = energy
        server = server_summary(run_dir, everything)
        if server is not None:
            out.server = server
    return out


#: a scenario whose targets are not known (records summarised without their manifest)
_NONE = Targets()


def summarize_stages(
    records: Iterable[RequestRecord], targets: dict[str, Targets] | None = None
) -> dict[str, ScenarioSummary]:
    """One scenario summary per load stage (sweep stages), keyed by stage label, in first-seen order."""
    by_stage: dict[str, list[RequestRecord]] = defaultdict(list)
    for r in records:
        by_stage[r.load_stage or ""].append(r)
    targets = targets or {}
    return {label: _scenario(recs, targets.get(recs[0].scenario, _NONE)) for label, recs in by_stage.items()}


def _scenario(recs: list[RequestRecord], target: Targets) -> ScenarioSummary:
    steady = [r for r in recs if r.stage == "steady"]
    all_ok = [r for r in steady if r.status == "ok"]
    ok = [r for r in all_ok if not r.cold_start]
    cold = [r for r in all_ok if r.cold_start]
    warm_ok = [r for r in recs if r.is_warmup and r.status == "ok"]
    out = ScenarioSummary(
        requests=_requests(recs, steady, all_ok, cold),
        latency_ms={
            "ttft": describe(r.ttft_ms for r in ok),
            "itl": describe(itertools.chain.from_iterable(r.itl_ms for r in ok)),
            "tpot": describe(r.tpot_ms for r in ok),
            "e2e": describe(r.e2e_ms for r in ok),
        },
        native_ms={
            "prefill": describe(r.prefill_ms for r in ok),
            "decode": describe(r.decode_ms for r in ok),
            "load": describe(r.load_ms for r in ok),
            "ttft": describe(r.native_ttft_ms for r in ok),
            "queue": describe(r.queue_ms for r in ok),
        },
        cold_start=ColdStarts(
            n=len(cold),
            load_ms=describe(r.load_ms for r in cold),
            ttft_ms=describe(r.ttft_ms for r in cold),
            e2e_ms=describe(r.e2e_ms for r in cold),
        ),
        goodput=goodput(steady, target.slo),
        load=_load(steady, target),
        throughput=_throughput(ok),
        overhead_pct=describe(r.overhead_pct for r in ok),
        decode_fraction=describe(r.decode_fraction for r in ok),
        warmup=_warmup(warm_ok, ok),
        tokens=_tokens(ok, target),
    )
    _add_workload_blocks(out, ok, target)
    return out


def _requests(
    recs: list[RequestRecord], steady: list[RequestRecord], ok: list[RequestRecord], cold: list[RequestRecord]
) -> Requests:
    reasons = Counter(r.reason or "unknown" for r in steady if r.status == "degraded")
    return Requests(
        steady=len(steady),
        ok=len(ok),
        degraded=len(steady) - len(ok),
        success_rate=len(ok) / len(steady) if steady else None,
        cold_start=len(cold),
        degraded_by_reason=dict(sorted(reasons.items())),
        warmup=sum(1 for r in recs if r.is_warmup),
        interrupted=sum(1 for r in recs if r.reason == "interrupted"),
    )


def _add_workload_blocks(out: ScenarioSummary, ok: list[RequestRecord], target: Targets) -> None:
    """Requested against measured lengths, the prefix cache and conversations, where a run has them."""
    prompt = _length_check([(r.requested_prompt_tokens, r.prompt_tokens, r.template_tokens) for r in ok])
    output = _length_check([(r.requested_output_tokens, r.output_tokens, None) for r in ok])
    if prompt is not None or (output is not None and target.workload):
        out.workload = Workload(prompt=prompt, output=output)
    cache = _prefix_cache(ok)
    if cache is not None:
        out.prefix_cache = cache
    talks = _conversations(ok)
    if talks is not None:
        out.conversations = talks
    models = {r.model for r in ok}
    if target.models and len(models) > 1:
        out.by_model = {m: _scenario([r for r in ok if r.model == m], _NONE) for m in sorted(models)}


def _length_check(pairs: list[tuple[int | None, int | None, int | None]]) -> LengthCheck | None:
    asked = [(a, m, t) for a, m, t in pairs if a is not None]
    requested = describe(a for a, _, _ in asked)
    if requested is None:
        return None
    measured = [(a, m) for a, m, _ in asked if m is not None]
    return LengthCheck(
        n=len(asked),
        requested=requested,
        measured=describe(m for _, m in measured),
        requested_min=float(min(a for a, _, _ in asked)),
        measured_min=float(min(m for _, m in measured)) if measured else None,
        exact=sum(1 for a, m in measured if a == m),
        within_one=sum(1 for a, m in measured if abs(a - m) <= 1),
        template=describe(t for _, _, t in asked),
    )


#: Fewest cached tokens that make a request a prefix-cache hit, beyond the chat template's own tokens: a
#: server always finds the template's opening tokens in its cache, which is not a shared prefix.
PREFIX_HIT_MIN_TOKENS = 16


def _is_hit(r: RequestRecord) -> bool:
    return (r.cached_prompt_tokens or 0) >= max(PREFIX_HIT_MIN_TOKENS, (r.template_tokens or 0) + 1)


def _prefix_cache(ok: list[RequestRecord]) -> PrefixCache | None:
    """Hits: requests whose cached prompt tokens reach ``PREFIX_HIT_MIN_TOKENS`` past the template's own."""
    seen = [r for r in ok if r.cached_prompt_tokens is not None]
    hits = [r for r in seen if _is_hit(r)]
    groups = {r.prefix_group for r in ok if r.prefix_group is not None}
    if not seen:
        return None
    misses = [r for r in seen if not _is_hit(r)]
    cached = sum(r.cached_prompt_tokens or 0 for r in seen)
    prompt = sum(r.prompt_tokens or 0 for r in seen)
    return PrefixCache(
        requests=len(seen),
        hits=len(hits),
        hit_rate=len(hits) / len(seen),
        cached_tokens=cached,
        prompt_tokens=prompt,
        token_hit_rate=cached / prompt if prompt else None,
        ttft_hit_ms=describe(r.ttft_ms for r in hits),
        ttft_miss_ms=describe(r.ttft_ms for r in misses),
        groups=len(groups),
    )


#: Context-length bands of the conversation summary, in prompt tokens (upper bounds).
CONTEXT_BANDS = (256, 512, 1024, 2048, 4096, 8192, 16384, 32768)


def _band(tokens: int) -> str:
    lo = 0
    for hi in CONTEXT_BANDS:
        if tokens <= hi:
            return f"{lo + 1}-{hi}"
        lo = hi
    return f">{CONTEXT_BANDS[-1]}"


def _turn_stats(key: str, recs: list[RequestRecord]) -> TurnStats:
    return TurnStats(
        key=key,
        n=len(recs),
        ttft_ms=describe(r.ttft_ms for r in recs),
        prompt_tokens=describe(r.prompt_tokens for r in recs),
    )


def _conversations(ok: list[RequestRecord]) -> Conversations | None:
    turns = [r for r in ok if r.turn is not None]
    if not turns:
        return None
    by_turn: dict[int, list[RequestRecord]] = defaultdict(list)
    by_band: dict[str, list[RequestRecord]] = defaultdict(list)
    for r in turns:
        by_turn[r.turn or 0].append(r)
        if r.prompt_tokens is not None:
            by_band[_band(r.prompt_tokens)].append(r)
    order = {(_band(hi)): i for i, hi in enumerate((*CONTEXT_BANDS, CONTEXT_BANDS[-1] + 1))}
    return Conversations(
        conversations=len({r.conversation_id for r in turns}),
        turns=len(turns),
        by_turn=[_turn_stats(str(k), v) for k, v in sorted(by_turn.items())],
        by_context=[_turn_stats(k, by_band[k]) for k in sorted(by_band, key=order.__getitem__)],
    )


def goodput(steady: list[RequestRecord], slo: dict[str, float]) -> Goodput | None:
    """Share of steady requests meeting the SLOs; degraded requests count as misses, never drop out."""
    limits = {k: slo[k] for k in ("ttft_ms", "tpot_ms", "e2e_ms") if slo.get(k) is not None}
    if not limits or not steady:
        return None
    met = sum(1 for r in steady if meets_slo(r, limits))
    window = _window_s(steady)
    return Goodput(
        slo=limits,
        met=met,
        of=len(steady),
        share=met / len(steady),
        requests_per_s=met / window if window else None,
    )


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


def _load(steady: list[RequestRecord], target: Targets) -> LoadFidelity | None:
    """Rate fidelity of an open-loop stage: requested, scheduled and achieved rate, schedule lag."""
    rates = [r.target_rate for r in steady if r.target_rate is not None]
    rate = max(rates) if rates else None  # a ramp's records carry the rate as it rose
    if rate is None and target.arrival in (None, "closed"):
        return None
    intended = [r.intended_offset_ms for r in steady]
    achieved = _rate([r.sent_offset_ms for r in steady])
    scheduled = _rate(intended)
    lag = describe(r.schedule_lag_ms for r in steady)
    limit = target.lag_limit_ms
    return LoadFidelity(
        arrival=target.arrival or "trace",
        burstiness_requested=target.burstiness if target.arrival == "gamma" else None,
        burstiness_measured=burstiness_of([t / 1000 for t in intended]),
        rate_requested=rate,
        rate_scheduled=scheduled,
        rate_achieved=achieved,
        rate_error_pct=(achieved / rate - 1) * 100 if achieved and rate else None,
        rate_error_vs_schedule_pct=(achieved / scheduled - 1) * 100 if achieved and scheduled else None,
        schedule_lag_ms=lag,
        lag_limit_ms=limit,
        trustworthy=None if lag is None or limit is None else lag.p99 <= limit,
        max_concurrency=target.max_concurrency,
    )


def _throughput(ok: list[RequestRecord]) -> Throughput:
    tokens = sum(r.output_tokens or 0 for r in ok)
    prompt_tokens = sum(r.prompt_tokens or 0 for r in ok)
    decode_s = sum((r.decode_ms or 0.0) for r in ok if r.decode_ms is not None) / 1000
    native_tokens = sum(r.output_tokens or 0 for r in ok if r.decode_ms is not None)
    window_s = _window_s(ok)
    return Throughput(
        native_tok_s_per_request=describe(r.native_tok_s for r in ok),
        wall_tok_s_per_request=describe(r.wall_tok_s for r in ok),
        native_tok_s_aggregate=native_tokens / decode_s if decode_s > 0 else None,
        output_tokens=tokens,
        prompt_tokens=prompt_tokens,
        window_s=window_s or None,
        output_tok_s=tokens / window_s if window_s else None,
        prompt_tok_s=prompt_tokens / window_s if window_s else None,
        requests_per_s=len(ok) / window_s if window_s else None,
    )


def _warmup(warm_ok: list[RequestRecord], ok: list[RequestRecord]) -> Warmup:
    warm_med = median(r.e2e_ms for r in warm_ok)
    steady_med = median(r.e2e_ms for r in ok)
    ratio = warm_med / steady_med if warm_med is not None and steady_med else None
    return Warmup(
        n=len(warm_ok),
        median_e2e_ms=warm_med,
        steady_median_e2e_ms=steady_med,
        ratio=ratio,
        needs_warm_pool=ratio is not None and ratio > WARMUP_RATIO_LIMIT,
    )


def _tokens(ok: list[RequestRecord], target: Targets) -> Tokens:
    return Tokens(
        prompt=describe(r.prompt_tokens for r in ok),
        prompt_target=target.prompt_tokens,
        output=describe(r.output_tokens for r in ok),
        output_target=target.output_tokens,
        early_stop=sum(1 for r in ok if r.early_stop),
        source=dict(Counter(r.token_source or "unknown" for r in ok)),
        cached_prompt_tokens=sum(r.cached_prompt_tokens or 0 for r in ok),
        server_vs_chunk_mismatch=sum(
            1
            for r in ok
            if r.token_source == "server" and r.output_tokens != r.chunks and r.streamed is not False
        ),
    )
