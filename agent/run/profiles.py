"""Run profiles: which stages a launch runs, planned ahead and each next one chosen from the last.

A plain run is one stage (its tenants at once); a sweep is a stage per load level that stops once more
load buys no more throughput within the SLOs; a replay is one stage whose requests are made from a
trace once the backend is up (with its tokenizer). A launch asks its profile for every stage it may run
(so prompts are made and request shapes warmed before the clock), then for each next stage with the
records of the one that ran; the profile says why it stopped early.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from agent.backends.base import Backend
from agent.backends.capabilities import ContextBound
from agent.core.errors import ConfigError
from agent.core.manifest import TraceInfo
from agent.core.record import GenerationRequest, RequestRecord
from agent.core.scenario import Scenario, Sweep, Targets
from agent.core.trace import PromptSynth, TokenCodec, TraceRequest, trace_requests
from agent.run.runner import expected_records
from analysis.results import SweepCurve, SweepPoint
from analysis.summary import summarize_stages
from analysis.sweep import analyse, point, saturation

__all__ = ["Profile", "ReplayProfile", "StagePlan", "Stages", "SweepProfile", "Tenant"]


@dataclass(slots=True)
class Tenant:
    """One scenario inside a stage; a replay tenant brings its own requests and clock."""

    scenario: Scenario
    requests: list[GenerationRequest] | None = None
    offsets: list[float] | None = None

    def expected(self) -> int | None:
        """Records this tenant writes when bounded by count (None when bounded by time)."""
        if self.requests is not None:
            return self.scenario.warmup + len(self.requests)
        return expected_records(self.scenario)


@dataclass(slots=True)
class StagePlan:
    """A load level: its label (None for a plain run), the value swept over, and its tenants."""

    label: str | None
    tenants: list[Tenant]
    value: float | None = None


class Profile(Protocol):
    """The stages of one launch."""

    #: why the profile ended before its last planned stage (None: it ran them all, or was stopped)
    stopped_early: str | None
    #: whether ``next`` reads the records of the stage that ran (the launch keeps them only then)
    reads_records: bool

    def planned(self) -> list[StagePlan]:
        """Every stage the profile may run, in order (known once ``prepare`` is done)."""

    async def prepare(self, backend: Backend) -> None:
        """Anything that needs the started backend before the stages are known (a replay's requests)."""

    def next(self, done: StagePlan | None, records: list[RequestRecord]) -> StagePlan | None:
        """The stage after ``done`` (None: the first), given ``done``'s records; None when it ends."""


@dataclass(slots=True)
class Stages:
    """A fixed list of stages run in order: a plain run is one, its tenants at once."""

    stages: list[StagePlan]
    stopped_early: str | None = None
    reads_records: bool = False

    def planned(self) -> list[StagePlan]:
        """Every stage."""
        return self.stages

    async def prepare(self, backend: Backend) -> None:
        """Nothing to make: the stages are given."""

    def next(self, done: StagePlan | None, records: list[RequestRecord]) -> StagePlan | None:
        """The stage after ``done`` in the list."""
        i = 0 if done is None else _after(self.stages, done)
        return self.stages[i] if i < len(self.stages) else None


def _after(stages: list[StagePlan], done: StagePlan) -> int:
    """The position after ``done`` in ``stages``, found by identity (two stages may be equal)."""
    return next(i for i, st in enumerate(stages) if st is done) + 1


def sweep_stage(sc: Scenario, value: float) -> Scenario:
    """The scenario of one sweep stage: its load level, and the sweep's per-stage bound."""
    assert sc.sweep is not None
    sw = sc.sweep
    bounds: dict[str, Any] = {}
    if sw.stage_requests or sw.stage_duration:
        bounds = {"requests": sw.stage_requests, "duration": sw.stage_duration}
        if sw.stage_duration and not sw.stage_requests:
            bounds["requests"] = None
    data = sc.normalised() | bounds
    if sw.over == "rate":
        arrival = data["load"]["arrival"]
        open_arrival = "poisson" if arrival == "closed" else arrival
        data["load"] = data["load"] | {"rate": value, "arrival": open_arrival}
    else:
        if value != int(value):
            raise ConfigError(f"concurrency must be a whole number, got {value:g}")
        data["concurrency"] = int(value)
        data["load"] = data["load"] | {"arrival": "closed"}
    return sc.derive(data, location=f"sweep stage {value:g}")


@dataclass(slots=True)
class SweepProfile:
    """Stages of rising load; after each, its point on the curve decides whether the next one runs.

    A stage saturates when its throughput rises by less than the sweep's ``min_gain`` over the stage
    before, or its SLO percentile crosses an objective (``analysis.sweep``); the sweep stops there unless
    it was asked to run every stage. Only the first stage warms up.
    """

    scenario: Scenario
    targets: dict[str, Targets]
    stages: list[StagePlan] = field(default_factory=list)
    points: list[SweepPoint] = field(default_factory=list)
    stopped_early: str | None = None
    reads_records: bool = True

    def __post_init__(self) -> None:
        sw = self.sweep
        for i, value in enumerate(sw.stage_values()):
            stage_sc = sweep_stage(self.scenario, value)
            if i and stage_sc.warmup:
                stage_sc = stage_sc.with_overrides(warmup=0)
            self.stages.append(StagePlan(f"{sw.over}={value:g}", [Tenant(stage_sc)], value))

    @property
    def sweep(self) -> Sweep:
        """The scenario's sweep block."""
        assert self.scenario.sweep is not None
        return self.scenario.sweep

    def planned(self) -> list[StagePlan]:
        """Every stage of the sweep, up to its last load level."""
        return self.stages

    async def prepare(self, backend: Backend) -> None:
        """Nothing to make: the stages follow from the sweep block."""

    def next(self, done: StagePlan | None, records: list[RequestRecord]) -> StagePlan | None:
        """The next load level, unless the stage that ran saturated (or wrote nothing)."""
        if done is not None:
            why = self._saturated(done, records)
            if why is not None:
                self.stopped_early = why
                return None
        i = 0 if done is None else _after(self.stages, done)
        return self.stages[i] if i < len(self.stages) else None

    def _saturated(self, done: StagePlan, records: list[RequestRecord]) -> str | None:
        stats = summarize_stages(records, self.targets).get(done.label or "")
        if stats is None:
            return "the stage wrote no records"
        slo = self.scenario.slo
        self.points.append(point(done.label or "", done.value or 0.0, stats, slo.percentile))
        why = saturation(self.points, slo, self.sweep.min_gain)
        return why if self.sweep.stop_at_saturation else None

    def curve(self) -> SweepCurve:
        """The throughput/latency curve of the stages that ran, with its knee and saturation."""
        return analyse(self.points, self.scenario.slo, self.sweep.min_gain)


@dataclass(slots=True)
class ReplayProfile:
    """One stage of a trace's requests at the trace's own times, made once the backend is up.

    Each request's prompt is cut to the trace's prompt length with the backend's tokenizer where it has
    one (estimated otherwise, and said so in the manifest); a request that cannot fit the server's
    context stops the replay before anything is sent.
    """

    scenario: Scenario
    items: list[TraceRequest]
    offsets: list[float]
    corpus: str
    source: Path
    trace: TraceInfo
    stage: StagePlan | None = None
    stopped_early: str | None = None
    reads_records: bool = False

    def planned(self) -> list[StagePlan]:
        """The replay's one stage, once ``prepare`` made it."""
        return [self.stage] if self.stage is not None else []

    async def prepare(self, backend: Backend) -> None:
        """Check every request fits, then make each one's prompt at the trace's length."""
        fits(self.items, backend.context_tokens if isinstance(backend, ContextBound) else None, self.source)
        synth = PromptSynth(self.corpus, backend if isinstance(backend, TokenCodec) else None)
        await synth.prepare()
        self.trace.prompt_lengths = "backend tokenizer" if synth.exact else "estimated"
        requests = await trace_requests(self.items, self.scenario, synth)
        self.stage = StagePlan(None, [Tenant(self.scenario, requests=requests, offsets=self.offsets)])

    def next(self, done: StagePlan | None, records: list[RequestRecord]) -> StagePlan | None:
        """The one stage, then the end."""
        return self.stage if done is None else None


def fits(items: list[TraceRequest], context: int | None, path: Path) -> None:
    """Every request fits the server's context (where the backend knows it), or none is sent."""
    if not context:
        return
    for i, it in enumerate(items, 1):
        need = (it.prompt_tokens or 0) + it.output_tokens
        if need > context:
            raise ConfigError(
                f"request {i} asks for {it.prompt_tokens or 0} prompt + {it.output_tokens} output tokens, "
                f"past the server's context of {context} per request; trim the trace or give the server a "
                "larger context",
                location=str(path),
            )
