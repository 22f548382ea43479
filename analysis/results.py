"""Typed results: a run's summary, a sweep's, and an analysis; what renderers read and JSON files hold.

Every block is built directly by the analysis that computes it, field by field: a block refuses a
field it does not name (``extra="forbid"``), so what a JSON file holds is exactly what these classes
declare, and renderers read the named fields by attribute, checked by the type checker. ``dump()`` writes
exactly what was given: nothing is added, renamed or dropped on the way to disk.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "SUMMARY_SCHEMA_VERSION",
    "AnalysisOptions",
    "AnalysisResult",
    "Anova",
    "ColdStart",
    "ComparisonRow",
    "Cost",
    "Distribution",
    "Drift",
    "Fit",
    "Interval",
    "MetricStats",
    "Performance",
    "Quality",
    "RunComparison",
    "RunInfo",
    "RunSummary",
    "ScenarioSummary",
    "ScorerDrift",
    "StudyResult",
    "SweepSummary",
    "TaskDrift",
    "TaskScores",
]


SUMMARY_SCHEMA_VERSION = 1


class Block(BaseModel):
    """A result block: every field named and typed; a field it does not name is refused."""

    model_config = ConfigDict(extra="forbid")

    def dump(self) -> dict[str, Any]:
        """JSON-ready, with only the fields that were given."""
        return self.model_dump(mode="json", exclude_unset=True)


class Interval(Block):
    """An estimate with its confidence interval."""

    estimate: float
    low: float
    high: float
    level: float = 0.95
    n: int = 0


class Distribution(Block):
    """Count, mean and upper percentiles of one metric."""

    n: int
    mean: float
    p50: float
    p95: float
    p99: float
    max: float


class MetricStats(Block):
    """One per-request metric of one run and scenario: its distribution and the median's CI."""

    unit: str
    lower_is_better: bool
    distribution: Distribution
    median_ci: Interval | None = None


class ColdStart(Block):
    """Requests that found the model unloaded (first request, or after an idle gap)."""

    n: int = 0
    ttft_p50_ms: float | None = None
    ttft_p50_delta_ms: float | None = None
    load_p50_ms: float | None = None


class Fit(Block):
    """A least-squares line y = intercept + slope·x, with the slope's CI and whether it is actionable."""

    slope: float
    intercept: float
    slope_ci: list[float]
    r2: float
    n: int
    actionable: bool


class Performance(Block):
    """One run's performance on one scenario (the run's own summary blocks, plus CIs and fits)."""

    requests: Requests | None = None
    metrics: dict[str, MetricStats] = Field(default_factory=dict)
    throughput: Throughput | None = None
    goodput: Goodput | None = None
    warmup: Warmup | None = None
    cold_start: ColdStart = Field(default_factory=ColdStart)
    overhead_pct: Distribution | None = None
    decode_fraction: Distribution | None = None
    tokens: Tokens | None = None
    scaling: dict[str, Fit] = Field(default_factory=dict)


class ComparisonRow(Block):
    """One metric of one scenario, candidate against baseline."""

    metric: str
    lower_is_better: bool
    n_baseline: int
    n_candidate: int
    median_baseline: float | None = None
    median_candidate: float | None = None
    change_pct: float | None = None
    diff_ci: Interval | None = None
    p_adjusted: float | None = None
    cohens_d: float | None = None
    effect: str | None = None
    mde_abs: float | None = None
    verdict: str
    mann_whitney_u: float | None = None
    p_mann_whitney: float | None = None
    welch_t: float | None = None
    p_welch: float | None = None
    #: the smallest Cohen's d the samples could detect at 80 % power
    mde_d: float | None = None


class GeoRatio(Block):
    """Geometric mean of candidate/baseline median ratios over the scenarios both ran."""

    scenarios: int
    geomean_ratio: float


class RunComparison(Block):
    """A candidate against the baseline: rows per scenario and the cross-scenario ratios."""

    scenarios: dict[str, list[ComparisonRow]]
    geomean_ratio: dict[str, GeoRatio] = Field(default_factory=dict)


class Anova(Block):
    """One-way ANOVA across every run for one scenario and metric."""

    f: float
    p: float
    groups: int


class RunInfo(Block):
    """What one analysed run is."""

    label: str
    path: str
    run_id: str | None = None
    backends: list[str]
    models: list[str]
    scenarios: list[str]
    records: int
    ok: int
    config_sha256: str | None = None
    started_at: str | None = None
    warnings: list[str] = Field(default_factory=list)
    #: the server's own figures per stage, where the run scraped them (``analysis.server``)
    server: ServerSummary | None = None


class AnalysisOptions(Block):
    """The statistics and cost inputs the analysis ran with."""

    alpha: float
    resamples: int
    seed: int
    usd_per_hour: float | None = None
    tokens_per_month: float | None = None
    burst_factor: float = 1.0


class Capacity(Block):
    """Workers a monthly token volume needs at the run's throughput, with burst headroom."""

    tokens_per_month: float
    burst_factor: float
    tokens_per_s_per_worker: float
    workers: float
    workers_whole: int


class Cost(Block):
    """Cost and capacity of one run on one scenario."""

    output_tok_s: float | None = None
    usd_per_1m_output_tokens: float | None = None
    usd_per_1m_tokens: float | None = None
    usd_per_request: float | None = None
    capacity: Capacity | None = None
    kwh_per_1m_output_tokens: float | None = None
    usd_per_hour: float | None = None
    tokens_per_request: float | None = None


class TaskScores(Block):
    """One run's scores on one task group: each scorer's mean with its CI, and the key average."""

    n: int
    scorers: dict[str, Interval | None]
    key_average: Interval | None = None
    prompts: int = 0


class ScorerDrift(Block):
    """One scorer on one task group in both runs, with the paired delta's CI."""

    baseline: float | None = None
    candidate: float | None = None
    delta: Interval | None = None


class TaskDrift(Block):
    """How one task group moved from the baseline's outputs to the candidate's."""

    n: int
    identical_rate: float | None = None
    output_rouge_l: float | None = None
    scorers: dict[str, ScorerDrift] = Field(default_factory=dict)
    benchmark_delta_points: float | None = None
    generation_delta_pct: float | None = None
    tier: str | None = None
    kl_first_tokens: KlDrift | None = None
    drifted: bool = False
    output_semscore: float | None = None
    key_average: KeyAverages | None = None


class KlDrift(Block):
    """KL(baseline ‖ candidate) on the first tokens, over the prompts where both runs kept logprobs."""

    mean: float
    max: float
    prompts: int


class KeyAverages(Block):
    """The key metrics' average in each run."""

    baseline: float | None = None
    candidate: float | None = None


class LeastSimilar(Block):
    """One of the prompts whose outputs moved most from the baseline's (outputs cut at 300 characters)."""

    prompt_id: str
    task: str
    output_rouge_l: float
    baseline: str
    candidate: str


class Drift(Block):
    """A candidate's outputs against the baseline's on the prompts both answered."""

    drifted: bool
    tier: str | None = None
    prompts_shared: int
    identical_rate: float | None = None
    output_rouge_l: float | None = None
    output_semscore: float | None = None
    kl_first_tokens: KlDrift | None = None
    tasks: dict[str, TaskDrift]
    least_similar: list[LeastSimilar] = Field(default_factory=list)
    similarity_floor: float | None = None
    prompts_baseline: int = 0
    prompts_candidate: int = 0
    only_in_baseline: list[str] = Field(default_factory=list)
    only_in_candidate: list[str] = Field(default_factory=list)
    tier_level: int | None = None


class Quality(Block):
    """Every run's scores per task group, and each candidate's drift from the baseline."""

    semscore_model: str | None = None
    semscore_unavailable: str | None = None
    runs: dict[str, dict[str, TaskScores]]
    drift: dict[str, Drift] = Field(default_factory=dict)


class AnalysisResult(Block):
    """Everything ``analyze`` found, schema-versioned."""

    schema_version: int
    kind: str
    created_at: str
    options: AnalysisOptions
    baseline: str | None = None
    runs: list[RunInfo]
    performance: dict[str, dict[str, Performance]]
    comparisons: dict[str, RunComparison]
    verdicts: dict[str, dict[str, int]]
    anova: dict[str, dict[str, Anova]]
    cost: dict[str, dict[str, Cost]]
    quality: Quality | None = None
    figures: list[str] = Field(default_factory=list)


class Requests(Block):
    """Counts of one scenario's records; only steady ones count toward success."""

    steady: int
    ok: int
    degraded: int
    success_rate: float | None = None
    cold_start: int = 0
    degraded_by_reason: dict[str, int] = Field(default_factory=dict)
    warmup: int = 0
    interrupted: int = 0


class ColdStarts(Block):
    """Cold requests, kept out of the steady figures."""

    n: int = 0
    load_ms: Distribution | None = None
    ttft_ms: Distribution | None = None
    e2e_ms: Distribution | None = None


class Goodput(Block):
    """Steady requests that met every objective set; degraded ones count as misses."""

    slo: dict[str, float]
    met: int
    of: int
    share: float
    requests_per_s: float | None = None


class LoadFidelity(Block):
    """An open-loop or replayed stage: the rate asked, scheduled and achieved, and the schedule lag."""

    arrival: str
    burstiness_requested: float | None = None
    burstiness_measured: float | None = None
    rate_requested: float | None = None
    rate_scheduled: float | None = None
    rate_achieved: float | None = None
    rate_error_pct: float | None = None
    rate_error_vs_schedule_pct: float | None = None
    schedule_lag_ms: Distribution | None = None
    lag_limit_ms: float | None = None
    trustworthy: bool | None = None
    max_concurrency: int | None = None


class Throughput(Block):
    """Tokens and requests per second over the steady window, and per-request rates on both clocks."""

    native_tok_s_per_request: Distribution | None = None
    wall_tok_s_per_request: Distribution | None = None
    native_tok_s_aggregate: float | None = None
    output_tokens: int = 0
    prompt_tokens: int = 0
    window_s: float | None = None
    output_tok_s: float | None = None
    prompt_tok_s: float | None = None
    requests_per_s: float | None = None


class Warmup(Block):
    """Warmup against steady: the ratio of medians, and whether it calls for a warm pool."""

    n: int = 0
    median_e2e_ms: float | None = None
    steady_median_e2e_ms: float | None = None
    ratio: float | None = None
    needs_warm_pool: bool = False


class Tokens(Block):
    """Prompt and output lengths against their targets, early stops, where counts came from."""

    prompt: Distribution | None = None
    prompt_target: int | None = None
    output: Distribution | None = None
    output_target: int | None = None
    early_stop: int = 0
    source: dict[str, int] = Field(default_factory=dict)
    cached_prompt_tokens: int = 0
    server_vs_chunk_mismatch: int = 0


class LengthCheck(Block):
    """Lengths a workload asked for against the lengths the server counted, over the same ok requests."""

    n: int
    requested: Distribution
    measured: Distribution | None = None
    requested_min: float
    measured_min: float | None = None
    #: requests whose measured length equals the requested one, and within one token
    exact: int = 0
    within_one: int = 0
    #: chat template (and system prompt) tokens the server added, measured apart
    template: Distribution | None = None


class Workload(Block):
    """What a workload asked for and what the server measured: prompt and output lengths."""

    prompt: LengthCheck | None = None
    output: LengthCheck | None = None


class PrefixCache(Block):
    """The server's prefix cache: share of prompts and tokens it served, TTFT of hits against misses."""

    requests: int
    hits: int
    hit_rate: float
    cached_tokens: int
    prompt_tokens: int
    token_hit_rate: float | None = None
    ttft_hit_ms: Distribution | None = None
    ttft_miss_ms: Distribution | None = None
    groups: int = 0


class TurnStats(Block):
    """One turn position (or one context-length band) of the conversations."""

    key: str
    n: int
    ttft_ms: Distribution | None = None
    prompt_tokens: Distribution | None = None


class Conversations(Block):
    """Conversations replayed turn by turn: how many, and TTFT as the context grows."""

    conversations: int
    turns: int
    by_turn: list[TurnStats] = Field(default_factory=list)
    by_context: list[TurnStats] = Field(default_factory=list)


class ScenarioSummary(Block):
    """One scenario (or one sweep stage) of a run: steady ok records only, degraded ones counted apart."""

    requests: Requests
    latency_ms: dict[str, Distribution | None]
    native_ms: dict[str, Distribution | None]
    cold_start: ColdStarts
    goodput: Goodput | None = None
    load: LoadFidelity | None = None
    throughput: Throughput
    overhead_pct: Distribution | None = None
    decode_fraction: Distribution | None = None
    warmup: Warmup
    tokens: Tokens
    workload: Workload | None = None
    prefix_cache: PrefixCache | None = None
    conversations: Conversations | None = None
    #: several models (LoRA adapters) in one run: each one's summary of the same blocks
    by_model: dict[str, ScenarioSummary] | None = None


class EnergyRequests(Block):
    """Request windows by how well the power samples saw them."""

    windows: int
    by_quality: dict[str, int] = Field(default_factory=dict)
    no_data_share: float | None = None


class EnergyStage(Block):
    """One stage's macro energy window against the output tokens of its steady requests."""

    stage: str | None = None
    quality: str | None = None
    duration_s: float | None = None
    samples: int | None = None
    mean_power_w: float | None = None
    delta_power_w: float | None = None
    energy_j: float | None = None
    output_tokens: int = 0
    j_per_token: float | None = None
    kwh_per_1m_tokens: float | None = None
    flags: list[str] = Field(default_factory=list)


class EnergySummary(Block):
    """A run's energy: how it was measured, the idle baseline, and each stage's window."""

    status: str
    baseline: dict[str, float | int | str] | None = None
    poller: dict[str, float | int | str | None] | None = None
    requests: EnergyRequests | None = None
    stages: list[EnergyStage] = Field(default_factory=list)

    @property
    def measured(self) -> list[EnergyStage]:
        """The stages whose window gave a J/token."""
        return [s for s in self.stages if s.j_per_token is not None and s.output_tokens]


class ServerGauge(Block):
    """A server gauge over a stage window: its mean and peak."""

    mean: float
    peak: float


class ServerHistogram(Block):
    """A server histogram over a stage window: observations made in it, their mean and quantiles."""

    count: float
    mean_s: float | None = None
    p50_s: float | None = None
    p90_s: float | None = None
    p95_s: float | None = None
    p99_s: float | None = None


class ServerStage(Block):
    """The server's own figures over one stage window, with the wall clock's beside its TTFT and E2E."""

    stage: str
    window_s: float
    engine: str | None = None
    running: ServerGauge | None = None
    waiting: ServerGauge | None = None
    kv_usage: ServerGauge | None = None
    prefix_hit_rate: ServerGauge | None = None
    preemptions: float | None = None
    prompt_tokens: float | None = None
    cached_prompt_tokens: float | None = None
    generation_tokens: float | None = None
    prefix_queries: float | None = None
    prefix_hits: float | None = None
    ttft: ServerHistogram | None = None
    itl: ServerHistogram | None = None
    e2e: ServerHistogram | None = None
    queue_time: ServerHistogram | None = None
    prefix_hit_ratio: float | None = None
    ttft_wall_mean_ms: float | None = None
    ttft_server_mean_ms: float | None = None
    ttft_client_and_network_ms: float | None = None
    e2e_wall_mean_ms: float | None = None
    e2e_server_mean_ms: float | None = None

    def peak(self, concept: str) -> float | None:
        """The peak of a gauge (``running``, ``waiting``, ``kv_usage``) over the window, or None."""
        gauge = getattr(self, concept)
        return gauge.peak if isinstance(gauge, ServerGauge) else None


class ServerEndpoint(Block):
    """One endpoint the run scraped, and how the scraping went."""

    url: str | None = None
    engine: str | None = None
    scrapes: int | None = None
    errors: int | None = None
    scrape_ms_p50: float | None = None


class ServerSummary(Block):
    """The server's own figures per stage, from its scraped metrics, and the warm-cache flags."""

    status: str
    engine: str | None = None
    endpoints: list[ServerEndpoint] = Field(default_factory=list)
    stages: list[ServerStage] = Field(default_factory=list)
    prefix_cache_policy: str | None = None
    prefix_cache_resets: int = 0
    flags: list[str] = Field(default_factory=list)

    @property
    def scraped(self) -> bool:
        """True when the server's metrics were read (not only a reason they could not be)."""
        return self.status == "scraped"


class RunSummary(Block):
    """A run's ``summary.json``: every scenario, and the energy block when energy was measured."""

    schema_version: int
    run_id: str | None = None
    scenarios: dict[str, ScenarioSummary]
    energy: EnergySummary | None = None
    #: the server's own figures per stage, from its scraped metrics (``analysis.server``)
    server: ServerSummary | None = None


class SweepServer(Block):
    """A sweep stage's server figures, for the curve's table."""

    waiting_peak: float | None = None
    running_peak: float | None = None
    kv_usage_peak: float | None = None
    preemptions: float | None = None
    prefix_hit_ratio: float | None = None


class SweepPoint(Block):
    """One stage of a sweep's throughput/latency curve."""

    stage: str
    load: float
    throughput: float | None = None
    throughput_unit: str
    requests_per_s: float | None = None
    success_rate: float | None = None
    goodput_share: float | None = None
    ttft_ms_p50: float | None = None
    ttft_ms_pslo: float | None = None
    tpot_ms_p50: float | None = None
    e2e_ms_pslo: float | None = None
    rate_achieved: float | None = None
    lag_ms_p99: float | None = None
    trustworthy: bool | None = None
    server: SweepServer | None = None


class Saturation(Block):
    """The stage where more load stopped buying throughput within the SLOs, and why."""

    stage: str
    why: str
    #: what the server's own series say filled up
    server: str | None = None


class SweepCurve(Block):
    """A sweep's curve: every stage, the knee (the most load still worth it) and where it saturated."""

    points: list[SweepPoint]
    knee: SweepPoint | None = None
    saturated: Saturation | None = None


class SweepSummary(Block):
    """A sweep's ``summary.json``: the throughput/latency curve with its knee, and every stage's summary."""

    schema_version: int
    run_id: str | None = None
    sweep: SweepCurve
    stages: dict[str, ScenarioSummary]
    server: ServerSummary | None = None


class VariantInfo(Block):
    """What a study variant is: its backend and model, labels and axes, and what its runs reported."""

    name: str
    backend: str
    description: str = ""
    model: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    axis: dict[str, float] = Field(default_factory=dict)
    #: the backend's own facts from a run's manifest (engine, quantisation, versions, model file facts)
    facts: dict[str, Any] = Field(default_factory=dict)


class CellInfo(Block):
    """One cell of a study and its per-cell figures (medians over its ok steady requests, and rates)."""

    name: str
    variant: str
    scenario: str
    repetition: int
    status: str
    records: int = 0
    ok: int = 0
    detail: str | None = None
    figures: dict[str, float | None] = Field(default_factory=dict)


class EquivalenceRow(Block):
    """A variant against the baseline on one scenario and metric, repetitions as the unit."""

    scenario: str
    metric: str
    variant: str
    n_baseline: int
    n_candidate: int
    mean_baseline: float | None = None
    mean_candidate: float | None = None
    change_pct: float | None = None
    p_welch: float | None = None
    p_mann_whitney: float | None = None
    p_adjusted: float | None = None
    cohens_d: float | None = None
    margin: float | None = None
    p_tost: float | None = None
    mde: float | None = None
    verdict: str


class StudyAnova(Block):
    """One-way ANOVA across every variant on one scenario and metric (per-cell values)."""

    scenario: str
    metric: str
    f: float
    p: float


class TaskQuality(Block):
    """One task group's quality against the baseline: the tier and the two deltas it is the worse of."""

    n: int
    tier: str | None = None
    benchmark_delta_points: float | None = None
    generation_delta_pct: float | None = None
    similarity_rouge_l: float | None = None


class DecisionRow(Block):
    """One variant on one scenario: speed, latency, cost, energy and quality against the baseline."""

    scenario: str
    variant: str
    output_tok_s: float | None = None
    e2e_p95_ms: float | None = None
    ttft_p50_ms: float | None = None
    usd_per_1m_output_tokens: float | None = None
    j_per_token: float | None = None
    success_rate: float | None = None
    tier: str | None = None
    kl_mean: float | None = None
    identical_rate: float | None = None
    benchmark_delta_points: float | None = None
    generation_delta_pct: float | None = None
    quality_by_task: dict[str, TaskQuality] = Field(default_factory=dict)


class Recommendation(Block):
    """Which variant to use for a scenario, and why."""

    scenario: str
    variant: str | None = None
    reason: str


class ScalingRow(Block):
    """A log-log fit of a figure against a numeric axis of the variants (slope = elasticity)."""

    axis: str
    scenario: str
    metric: str
    fit: Fit


class StudyResult(Block):
    """Everything a study found: its plan, cells, equivalence, decision matrix and scaling fits."""

    schema_version: int
    kind: str
    created_at: str
    name: str
    description: str = ""
    order: str
    seed: int
    repetitions: int
    baseline: str
    alpha: float
    margin_pct: float
    variants: list[VariantInfo]
    cells: list[CellInfo]
    equivalence: list[EquivalenceRow] = Field(default_factory=list)
    anova: list[StudyAnova] = Field(default_factory=list)
    decision: list[DecisionRow] = Field(default_factory=list)
    recommendations: list[Recommendation] = Field(default_factory=list)
    scaling: list[ScalingRow] = Field(default_factory=list)
    semscore_model: str | None = None
