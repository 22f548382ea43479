"""Typed results: what ``analyze`` returns and every renderer reads, written as ``summary.json``.

Every block keeps fields it does not name (``extra="allow"``), so the JSON carries everything the
analysis computed while renderers read the named fields by attribute, checked by the type checker.
``dump()`` writes exactly what was given: nothing is added, renamed or dropped on the way to disk.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
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
    "ScorerDrift",
    "TaskDrift",
    "TaskScores",
]


class Block(BaseModel):
    """A result block: named fields typed, any other field kept as it came."""

    model_config = ConfigDict(extra="allow")

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

    requests: dict[str, Any] | None = None
    metrics: dict[str, MetricStats] = Field(default_factory=dict)
    throughput: dict[str, Any] | None = None
    goodput: dict[str, Any] | None = None
    warmup: dict[str, Any] | None = None
    cold_start: ColdStart = Field(default_factory=ColdStart)
    overhead_pct: dict[str, Any] | None = None
    decode_fraction: dict[str, Any] | None = None
    tokens: dict[str, Any] | None = None
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


class AnalysisOptions(Block):
    """The statistics and cost inputs the analysis ran with."""

    alpha: float
    resamples: int
    seed: int
    usd_per_hour: float | None = None
    tokens_per_month: float | None = None
    burst_factor: float = 1.0


class Cost(Block):
    """Cost and capacity of one run on one scenario."""

    output_tok_s: float | None = None
    usd_per_1m_output_tokens: float | None = None
    usd_per_1m_tokens: float | None = None
    usd_per_request: float | None = None
    capacity: dict[str, Any] | None = None
    kwh_per_1m_output_tokens: float | None = None


class TaskScores(Block):
    """One run's scores on one task group: each scorer's mean with its CI, and the key average."""

    n: int
    scorers: dict[str, Interval | None]
    key_average: Interval | None = None


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


class Drift(Block):
    """A candidate's outputs against the baseline's on the prompts both answered."""

    drifted: bool
    tier: str | None = None
    prompts_shared: int
    identical_rate: float | None = None
    output_rouge_l: float | None = None
    output_semscore: float | None = None
    kl_first_tokens: dict[str, Any] | None = None
    tasks: dict[str, TaskDrift]
    least_similar: list[dict[str, Any]] = Field(default_factory=list)


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
