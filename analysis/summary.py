"""Per-scenario summary of a run (method §1–§3): steady state only, degraded records left out.

Success rate, degraded reasons and the warmup ratio are figures of their own; every latency figure is a
distribution over ok steady records. The figures are computed over the records' columns
(``analysis.columns``), never one object per record, so a million records summarise in seconds and in a
few hundred MB; sums run in record order, as a loop over the records would, so the figures are the same.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from agent.core.arrivals import burstiness_of
from agent.core.record import RequestRecord, meets_slo
from agent.core.scenario import Targets
from analysis.columns import RecordColumns, Rows, as_rows
from analysis.energy import energy_summary
from analysis.results import (
    SUMMARY_SCHEMA_VERSION,
    ColdStarts,
    Conversations,
    Distribution,
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
from analysis.stats import describe, describe_itl, median, seqsum

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
    records: Iterable[RequestRecord] | RecordColumns | Rows,
    targets: dict[str, Targets] | None = None,
    run_dir: Path | None = None,
) -> RunSummary:
    """Summaries keyed by scenario, each held against its scenario's ``targets`` where they are known.

    With ``run_dir``, the run's energy block (macro windows, request-window coverage) and the server's
    own figures (from its scraped metrics) are added.
    """
    own = None if isinstance(records, RecordColumns | Rows) else RecordColumns.from_records(records)
    everything = as_rows(own if own is not None else records)
    try:
        targets = targets or {}
        out = RunSummary(
            schema_version=SUMMARY_SCHEMA_VERSION,
            scenarios={
                str(name): _scenario(rows, targets.get(str(name), _NONE))
                for name, rows in everything.groups("scenario").items()
            },
        )
        if run_dir is not None:
            energy = energy_summary(run_dir, everything)
            if energy is not None:
                out.energy = energy
            server = server_summary(run_dir, everything)
            if server is not None:
                out.server = server
        return out
    finally:
        if own is not None:
            own.close()


#: a scenario whose targets are not known (records summarised without their manifest)
_NONE = Targets()


def summarize_stages(
    records: Iterable[RequestRecord] | RecordColumns, targets: dict[str, Targets] | None = None
) -> dict[str, ScenarioSummary]:
    """One scenario summary per load stage (sweep stages), keyed by stage label, in first-seen order."""
    cols = records if isinstance(records, RecordColumns) else RecordColumns.from_records(records)
    try:
        targets = targets or {}
        out = {}
        for label, rows in cols.rows().groups("load_stage").items():
            first = rows.label_of("scenario", int(rows.codes("scenario")[0]))
            out[str(label or "")] = _scenario(rows, targets.get(str(first), _NONE))
        return out
    finally:
        if cols is not records:
            cols.close()


def _f(rows: Rows, name: str) -> Distribution | None:
    return describe(rows.f(name))


def _scenario(recs: Rows, target: Targets) -> ScenarioSummary:
    steady = recs.where(recs.is_("stage", "steady"))
    all_ok = steady.where(steady.is_("status", "ok"))
    cold_mask = all_ok.f("cold_start")
    ok, cold = all_ok.where(~cold_mask), all_ok.where(cold_mask)
    warm_ok = recs.where(recs.f("is_warmup") & recs.is_("status", "ok"))
    out = ScenarioSummary(
        requests=_requests(recs, steady, all_ok, cold),
        latency_ms={
            "ttft": _f(ok, "ttft_ms"),
            "itl": describe_itl(ok),
            "tpot": _f(ok, "tpot_ms"),
            "e2e": _f(ok, "e2e_ms"),
        },
        native_ms={
            "prefill": _f(ok, "prefill_ms"),
            "decode": _f(ok, "decode_ms"),
            "load": _f(ok, "load_ms"),
            "ttft": _f(ok, "native_ttft_ms"),
            "queue": _f(ok, "queue_ms"),
        },
        cold_start=ColdStarts(
            n=len(cold), load_ms=_f(cold, "load_ms"), ttft_ms=_f(cold, "ttft_ms"), e2e_ms=_f(cold, "e2e_ms")
        ),
        goodput=goodput(steady, target.slo),
        load=_load(steady, target),
        throughput=_throughput(ok),
        overhead_pct=_f(ok, "overhead_pct"),
        decode_fraction=_f(ok, "decode_fraction"),
        warmup=_warmup(warm_ok, ok),
        tokens=_tokens(ok, target),
    )
    _add_workload_blocks(out, ok, target)
    return out


def _counts(rows: Rows, name: str, none: str) -> Counter[str]:
    """How many rows hold each label of ``name`` (``none`` for rows with none), in first-seen order."""
    codes, first, n = np.unique(rows.codes(name), return_index=True, return_counts=True)
    out: Counter[str] = Counter()
    order = np.argsort(first)
    for code, count in zip(codes[order].tolist(), n[order].tolist(), strict=True):
        label = rows.label_of(name, code)
        out[none if label is None else str(label)] += count
    return out


def _requests(recs: Rows, steady: Rows, ok: Rows, cold: Rows) -> Requests:
    reasons = _counts(steady.where(steady.is_("status", "degraded")), "reason", "unknown")
    return Requests(
        steady=len(steady),
        ok=len(ok),
        degraded=len(steady) - len(ok),
        success_rate=len(ok) / len(steady) if len(steady) else None,
        cold_start=len(cold),
        degraded_by_reason=dict(sorted(reasons.items())),
        warmup=int(recs.f("is_warmup").sum()),
        interrupted=int(recs.is_("reason", "interrupted").sum()),
    )


def _add_workload_blocks(out: ScenarioSummary, ok: Rows, target: Targets) -> None:
    """Requested against measured lengths, the prefix cache and conversations, where a run has them."""
    prompt = _length_check(ok, "requested_prompt_tokens", "prompt_tokens", "template_tokens")
    output = _length_check(ok, "requested_output_tokens", "output_tokens", None)
    if prompt is not None or (output is not None and target.workload):
        out.workload = Workload(prompt=prompt, output=output)
    cache = _prefix_cache(ok)
    if cache is not None:
        out.prefix_cache = cache
    talks = _conversations(ok)
    if talks is not None:
        out.conversations = talks
    models = ok.groups("model")
    if target.models and len(models) > 1:
        out.by_model = {str(m): _scenario(models[m], _NONE) for m in sorted(models, key=str)}


def _length_check(
    rows: Rows, asked_name: str, measured_name: str, template_name: str | None
) -> LengthCheck | None:
    """Requested against measured lengths over the rows that asked for one (None when none did)."""
    asked = rows.f(asked_name)
    has = ~np.isnan(asked)
    if not has.any():
        return None
    rows, a = rows.where(has), asked[has]
    del asked
    m = rows.f(measured_name)
    both = ~np.isnan(m)
    a_both, m_both = a[both], m[both]
    return LengthCheck(
        n=len(rows),
        requested=describe(a),
        measured=describe(m_both),
        requested_min=float(a.min()),
        measured_min=float(m_both.min()) if m_both.size else None,
        exact=int((a_both == m_both).sum()),
        within_one=int((np.abs(a_both - m_both) <= 1).sum()),
        template=describe(rows.f(template_name)) if template_name is not None else None,
    )


#: Fewest cached tokens that make a request a prefix-cache hit, beyond the chat template's own tokens: a
#: server always finds the template's opening tokens in its cache, which is not a shared prefix.
PREFIX_HIT_MIN_TOKENS = 16


def _hits(rows: Rows) -> np.ndarray:
    cached = np.nan_to_num(rows.f("cached_prompt_tokens"))
    hit: np.ndarray = cached >= np.maximum(
        PREFIX_HIT_MIN_TOKENS, np.nan_to_num(rows.f("template_tokens")) + 1
    )
    return hit


def _prefix_cache(ok: Rows) -> PrefixCache | None:
    """Hits: requests whose cached prompt tokens reach ``PREFIX_HIT_MIN_TOKENS`` past the template's own."""
    seen = ok.where(~np.isnan(ok.f("cached_prompt_tokens")))
    if not len(seen):
        return None
    hit = _hits(seen)
    groups = ok.codes("prefix_group")
    cached = int(np.nan_to_num(seen.f("cached_prompt_tokens")).sum())
    prompt = int(np.nan_to_num(seen.f("prompt_tokens")).sum())
    return PrefixCache(
        requests=len(seen),
        hits=int(hit.sum()),
        hit_rate=int(hit.sum()) / len(seen),
        cached_tokens=cached,
        prompt_tokens=prompt,
        token_hit_rate=cached / prompt if prompt else None,
        ttft_hit_ms=describe(seen.f("ttft_ms")[hit]),
        ttft_miss_ms=describe(seen.f("ttft_ms")[~hit]),
        groups=int(np.unique(groups[groups >= 0]).size),
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


def _turn_stats(key: str, rows: Rows) -> TurnStats:
    return TurnStats(
        key=key, n=len(rows), ttft_ms=_f(rows, "ttft_ms"), prompt_tokens=_f(rows, "prompt_tokens")
    )


def _conversations(ok: Rows) -> Conversations | None:
    turns = ok.where(~np.isnan(ok.f("turn")))
    if not len(turns):
        return None
    turn = turns.f("turn")
    prompt = turns.f("prompt_tokens")
    known = ~np.isnan(prompt)
    bands = np.searchsorted(np.asarray(CONTEXT_BANDS, dtype=np.float64), prompt[known], side="left")
    with_prompt = turns.where(known)
    by_context = []
    for b in sorted(set(bands.tolist())):
        hi = CONTEXT_BANDS[b] if b < len(CONTEXT_BANDS) else CONTEXT_BANDS[-1] + 1
        by_context.append(_turn_stats(_band(hi), with_prompt.where(bands == b)))
    return Conversations(
        conversations=int(np.unique(turns.codes("conversation_id")).size),
        turns=len(turns),
        by_turn=[_turn_stats(str(int(k)), turns.where(turn == k)) for k in np.unique(turn)],
        by_context=by_context,
    )


def _meets(rows: Rows, limits: dict[str, float]) -> np.ndarray:
    """``meets_slo`` over columns: ok, and every figure with an objective known and within it."""
    met = rows.is_("status", "ok")
    for key, limit in limits.items():
        met &= rows.f(key) <= limit  # NaN (no figure) compares False: a miss
    return met


def goodput(steady: Rows, slo: dict[str, float]) -> Goodput | None:
    """Share of steady requests meeting the SLOs; degraded requests count as misses, never drop out."""
    limits = {k: slo[k] for k in ("ttft_ms", "tpot_ms", "e2e_ms") if slo.get(k) is not None}
    if not limits or not len(steady):
        return None
    met = int(_meets(steady, limits).sum())
    window = _window_s(steady)
    return Goodput(
        slo=limits,
        met=met,
        of=len(steady),
        share=met / len(steady),
        requests_per_s=met / window if window else None,
    )


def _window_s(rows: Rows) -> float | None:
    e2e = rows.f("e2e_ms")
    has = ~np.isnan(e2e)
    if not has.any():
        return None
    window = (
        float((rows.f("intended_offset_ms")[has] + e2e[has]).max())
        - float(rows.f("intended_offset_ms").min())
    ) / 1000
    return window if window > 0 else None


def _rate(offsets_ms: np.ndarray) -> float | None:
    if offsets_ms.size < 2:
        return None
    span = (float(offsets_ms.max()) - float(offsets_ms.min())) / 1000
    return (offsets_ms.size - 1) / span if span > 0 else None


def _load(steady: Rows, target: Targets) -> LoadFidelity | None:
    """Rate fidelity of an open-loop stage: requested, scheduled and achieved rate, schedule lag."""
    rates = steady.f("target_rate")
    rates = rates[~np.isnan(rates)]
    rate = float(rates.max()) if rates.size else None  # a ramp's records carry the rate as it rose
    if rate is None and target.arrival in (None, "closed"):
        return None
    intended = steady.f("intended_offset_ms")
    achieved = _rate(steady.f("sent_offset_ms"))
    scheduled = _rate(intended)
    lag = _f(steady, "schedule_lag_ms")
    limit = target.lag_limit_ms
    return LoadFidelity(
        arrival=target.arrival or "trace",
        burstiness_requested=target.burstiness if target.arrival == "gamma" else None,
        burstiness_measured=burstiness_of((intended / 1000).tolist()),
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


def _int_sum(values: np.ndarray) -> int:
    return int(np.nan_to_num(values).sum())


def _throughput(ok: Rows) -> Throughput:
    output = ok.f("output_tokens")
    tokens = _int_sum(output)
    prompt_tokens = _int_sum(ok.f("prompt_tokens"))
    decode = ok.f("decode_ms")
    timed = ~np.isnan(decode)
    decode_s = seqsum(decode[timed]) / 1000
    native_tokens = _int_sum(output[timed])
    window_s = _window_s(ok)
    return Throughput(
        native_tok_s_per_request=_f(ok, "native_tok_s"),
        wall_tok_s_per_request=_f(ok, "wall_tok_s"),
        native_tok_s_aggregate=native_tokens / decode_s if decode_s > 0 else None,
        output_tokens=tokens,
        prompt_tokens=prompt_tokens,
        window_s=window_s or None,
        output_tok_s=tokens / window_s if window_s else None,
        prompt_tok_s=prompt_tokens / window_s if window_s else None,
        requests_per_s=len(ok) / window_s if window_s else None,
    )


def _warmup(warm_ok: Rows, ok: Rows) -> Warmup:
    warm_med = median(warm_ok.f("e2e_ms"))
    steady_med = median(ok.f("e2e_ms"))
    ratio = warm_med / steady_med if warm_med is not None and steady_med else None
    return Warmup(
        n=len(warm_ok),
        median_e2e_ms=warm_med,
        steady_median_e2e_ms=steady_med,
        ratio=ratio,
        needs_warm_pool=ratio is not None and ratio > WARMUP_RATIO_LIMIT,
    )


def _tokens(ok: Rows, target: Targets) -> Tokens:
    server = ok.is_("token_source", "server")
    mismatch = server & (ok.f("output_tokens") != ok.f("chunks")) & (ok.f("streamed") != 0)
    return Tokens(
        prompt=_f(ok, "prompt_tokens"),
        prompt_target=target.prompt_tokens,
        output=_f(ok, "output_tokens"),
        output_target=target.output_tokens,
        early_stop=int(ok.f("early_stop").sum()),
        source=dict(_counts(ok, "token_source", "unknown")),
        cached_prompt_tokens=_int_sum(ok.f("cached_prompt_tokens")),
        server_vs_chunk_mismatch=int(mismatch.sum()),
    )
