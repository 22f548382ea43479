"""Load and validate ``scenarios/*.yaml``; errors name the file, line and field before any request is sent."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from agent.core.arrivals import geometric_series
from agent.core.errors import ConfigError, UnknownNameError
from agent.core.record import DEFAULT_TEXT_CAP, GenerationRequest
from agent.core.yamlfile import describe_error, line_of, read_yaml, validate

if TYPE_CHECKING:
    import yaml

__all__ = [
    "MAX_IN_FLIGHT",
    "MAX_REQUESTS",
    "AgentChain",
    "Batch",
    "Load",
    "PositiveDuration",
    "Prompt",
    "Scenario",
    "Slo",
    "Sweep",
    "Task",
    "builtin_dir",
    "list_builtin",
    "load_scenario",
    "parse_duration",
    "resolve_scenario",
]

#: Most requests one run keeps in flight (closed-loop clients, or open-loop workers at most).
MAX_IN_FLIGHT = 4096
#: Most requests one run may ask for (a billion: days of load at any rate a client reaches).
MAX_REQUESTS = 1_000_000_000

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


#: Longest duration accepted anywhere (a year): beyond it a value is a typo, not a plan.
MAX_DURATION_S = 366 * 86400.0


def parse_duration(value: Any) -> float | None:
    """Seconds from ``30``, ``"30s"``, ``"500ms"``, ``"2m"`` or ``"1h"``; None stays None.

    Negative, infinite, NaN and absurdly long (over a year) values are refused.
    """
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"not a duration: {value!r} (use seconds or a number with ms, s, m or h)")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not 0 <= seconds <= MAX_DURATION_S:  # NaN fails this too
        raise ValueError(f"not a usable duration: {value!r} (from 0 to a year)")
    return seconds


def _positive(value: float | None) -> float | None:
    if value is not None and value <= 0:
        raise ValueError("must be a positive duration")
    return value


Duration = Annotated[float | None, BeforeValidator(parse_duration)]
#: A duration that must be more than zero when given (intervals, timeouts, back-off).
PositiveDuration = Annotated[float | None, BeforeValidator(parse_duration), AfterValidator(_positive)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


#: Task groups a quality prompt belongs to; each chooses its scorers in ``analysis.quality``.
Task = Literal["summarization", "qa", "code", "creative", "classification", "multiple_choice"]


class Prompt(_Strict):
    """One prompt with a stable id, so runs can be compared prompt by prompt.

    Quality prompts also name their task group and a reference answer; the analyzer reads both back from
    the run's manifest.
    """

    id: str = Field(min_length=1)
    text: str = Field(min_length=1, pattern=r"\S", description="the prompt; not blank")
    task: Task | None = None
    reference: str | None = Field(None, min_length=1)


class Sampling(_Strict):
    """Sampling parameters sent with every request (omitted ones are left to the server)."""

    temperature: float | None = Field(None, ge=0, le=5)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0, le=1)
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repeat_penalty: float | None = Field(None, gt=0)
    stop: list[str] | None = None


class Timeouts(_Strict):
    """Per-request deadlines; a request that misses one becomes a degraded record."""

    first_token_s: float = Field(60.0, gt=0)
    total_s: float = Field(300.0, gt=0)


class Load(_Strict):
    """How requests are issued: a closed loop of ``concurrency`` clients, or open-loop arrivals at a rate."""

    arrival: Literal["closed", "constant", "poisson", "gamma"] = "closed"
    rate: float | None = Field(None, gt=0, le=100_000, description="open loop: target requests per second")
    burstiness: float = Field(1.0, gt=0, le=1000, description="gamma: shape; 1 = Poisson, < 1 burstier")
    max_concurrency: int | None = Field(
        None, ge=1, le=MAX_IN_FLIGHT, description=f"open loop: in-flight cap (default {MAX_IN_FLIGHT})"
    )
    think_time: Duration = Field(0.0, description="closed loop: pause per client between requests")
    seed: int = 0
    lag_limit_ms: float = Field(
        10.0, gt=0, description="open loop: a stage whose schedule-lag p99 exceeds this is not trustworthy"
    )
    idle_gap: Duration = Field(
        None, description="a request sent after this long with nothing in flight counts as a cold start"
    )

    @model_validator(mode="after")
    def _rate_for_open_loop(self) -> Load:
        if self.arrival != "closed" and self.rate is None:
            raise ValueError(f"arrival '{self.arrival}' needs a rate (requests per second)")
        if self.think_time is not None and self.think_time < 0:
            raise ValueError("think_time must not be negative")
        return self

    @property
    def open_loop(self) -> bool:
        """True for rate-driven arrivals."""
        return self.arrival != "closed"


class Slo(_Strict):
    """Service-level objectives: goodput is the share of requests meeting every one that is set."""

    ttft_ms: float | None = Field(None, gt=0)
    tpot_ms: float | None = Field(None, gt=0)
    e2e_ms: float | None = Field(None, gt=0)
    percentile: float = Field(95.0, gt=0, lt=100, description="the percentile a sweep holds against the SLO")


class Sweep(_Strict):
    """Stages over rising load: explicit values or a geometric series from ``start`` to ``stop``."""

    over: Literal["rate", "concurrency"] = "concurrency"
    values: list[float] | None = None
    start: float | None = Field(None, gt=0)
    stop: float | None = Field(None, gt=0)
    factor: float = Field(2.0, gt=1)
    stage_requests: int | None = Field(None, ge=2)
    stage_duration: Duration = None
    min_gain: float = Field(
        0.05,
        ge=0,
        description="saturated once throughput rises by less than this share over the stage before",
    )
    stop_at_saturation: bool = True

    @model_validator(mode="after")
    def _values(self) -> Sweep:
        if self.values is None and (self.start is None or self.stop is None):
            raise ValueError("give values, or start and stop (a doubling series by default)")
        if self.values is not None and (not self.values or any(v <= 0 for v in self.values)):
            raise ValueError("values must be a non-empty list of positive numbers")
        if self.start is not None and self.stop is not None and self.stop < self.start:
            raise ValueError("stop must not be below start")
        return self

    def stage_values(self) -> list[float]:
        """The load of every stage, in order."""
        if self.values is not None:
            return list(self.values)
        assert self.start is not None and self.stop is not None  # checked by the validator
        return geometric_series(self.start, self.stop, self.factor)


class AgentChain(_Strict):
    """Chains of steps: each step's prompt is the conversation so far plus a tool result."""

    steps: int = Field(4, ge=1, le=256)
    think_time: Duration = Field(0.0, description="pause between one step's answer and the next step")
    tool_results: list[str] = Field(
        default_factory=lambda: ["Tool result: ok."], min_length=1, description="cycled, one per step"
    )


class Batch(_Strict):
    """Prompts sent together: as concurrent requests, or as one batched call where the backend has one."""

    size: int = Field(8, ge=1, le=256)
    mode: Literal["concurrent", "batched"] = "concurrent"


class PromptFile(_Strict):
    """Prompts kept in YAML files beside the scenario: each a list of strings or of {id, text}."""

    file: str | list[str]

    def paths(self) -> list[str]:
        """The referenced files, in order."""
        return [self.file] if isinstance(self.file, str) else list(self.file)


class Scenario(_Strict):
    """A workload: what to send, how much, how fast, and what to keep."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_\-]*$")
    description: str = ""
    endpoint: Literal["chat", "completions"] = "chat"
    system: str | None = None
    prompts: Annotated[list[Prompt | Annotated[str, Field(pattern=r"\S")]], Field(min_length=1)] | PromptFile
    prompt_tokens: int | None = Field(None, ge=1, description="target prompt length, reported against")
    output_tokens: int = Field(128, ge=1, le=32768, description="max_tokens sent with each request")
    requests: int | None = Field(32, ge=1, le=MAX_REQUESTS)
    duration: Duration = Field(None, description="stop issuing new requests after this long")
    concurrency: int = Field(1, ge=1, le=MAX_IN_FLIGHT)
    warmup: int = Field(2, ge=0, le=MAX_REQUESTS)
    cooldown: int = Field(
        0, ge=0, le=MAX_REQUESTS, description="requests issued after steady under the same load, kept apart"
    )
    load: Load = Load()
    slo: Slo = Slo()
    sweep: Sweep | None = None
    agent: AgentChain | None = None
    batch: Batch | None = None
    sampling: Sampling = Sampling()
    ignore_eos: bool = True
    cache_prompt: bool = False
    timeout: Timeouts = Timeouts()
    keep_output_every: int = Field(1, ge=0, description="keep the text of every Nth response; 0 = none")
    max_output_chars: int = Field(
        DEFAULT_TEXT_CAP, ge=1, description="characters of a response's text a record keeps; the rest is cut"
    )
    logprobs: int = Field(
        0,
        ge=0,
        le=20,
        description="record the top-k logprobs of the first 10 output tokens (OpenAI-compatible servers); "
        "0 = none. Streams that ask for them are parsed in full, so keep it off in load tests",
    )
    source: str | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _bounded(self) -> Scenario:
        if self.requests is None and self.duration is None:
            raise ValueError("set requests, duration or both: a run must be bounded")
        if self.duration is not None and self.duration <= 0:
            raise ValueError("duration must be positive")
        if self.agent is not None and self.batch is not None:
            raise ValueError("a scenario is either agent chains or batches, not both")
        if (self.agent is not None or self.batch is not None) and self.load.open_loop:
            raise ValueError("agent chains and batches run closed loop; drop load.arrival or the block")
        return self

    @property
    def shape(self) -> Literal["single", "agent", "batch"]:
        """How each unit of work is sent: single requests, agent chains or batches."""
        return "agent" if self.agent is not None else "batch" if self.batch is not None else "single"

    def prompt_list(self) -> list[Prompt]:
        """Prompts with ids (inline strings get ``<name>-NNN``); file prompts must be resolved first."""
        if isinstance(self.prompts, PromptFile):
            raise ConfigError("prompt file not resolved; load scenarios with load_scenario()")
        return [
            p if isinstance(p, Prompt) else Prompt(id=f"{self.name}-{i:03d}", text=p)
            for i, p in enumerate(self.prompts)
        ]

    def normalised(self) -> dict[str, Any]:
        """The fully resolved config (defaults filled, prompts inlined) that the hash covers."""
        data = self.model_dump(mode="json")
        data["prompts"] = [p.model_dump(exclude_none=True) for p in self.prompt_list()]
        if not data.get("logprobs"):  # off: the hash stays what it was before the field existed
            data.pop("logprobs", None)
        if data.get("max_output_chars") == DEFAULT_TEXT_CAP:  # likewise at its default
            data.pop("max_output_chars", None)
        return data

    def config_hash(self) -> str:
        """sha256 of the normalised config (method §2)."""
        blob = json.dumps(self.normalised(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    def with_overrides(self, **overrides: Any) -> Scenario:
        """A validated copy with command-line overrides applied.

        None values are ignored; a dict value (e.g. ``load={"rate": 20}``) is merged into that block.
        """
        data = self.normalised()
        for key, value in overrides.items():
            if value is None:
                continue
            if isinstance(value, dict):
                value = {k: v for k, v in value.items() if v is not None}
                if not value:
                    continue
                if isinstance(data.get(key), dict):
                    value = {**data[key], **value}
            data[key] = value
        return self.derive(data, location="command line")

    def derive(self, data: dict[str, Any], *, location: str) -> Scenario:
        """The one way a scenario is made from another's ``normalised()`` data with changes in it.

        Validated like a file (an invalid value is one ``ConfigError`` naming the field and ``location``,
        never a traceback), and the source file is kept.
        """
        try:
            out = Scenario.model_validate(data)
        except ValidationError as e:
            raise ConfigError("; ".join(describe_error(err) for err in e.errors()), location=location) from e
        out.source = self.source
        return out

    def requests_iter(self) -> Iterator[GenerationRequest]:
        """Endless requests cycling through the prompts in order."""
        prompts = self.prompt_list()
        sampling = self.sampling.model_dump(exclude_none=True)
        seq = 0
        while True:
            p = prompts[seq % len(prompts)]
            messages = None
            if self.endpoint == "chat":
                messages = [{"role": "user", "content": p.text}]
                if self.system:
                    messages.insert(0, {"role": "system", "content": self.system})
            yield GenerationRequest(
                request_id=f"{self.name}-{seq:06d}",
                prompt=p.text if self.endpoint == "completions" else None,
                messages=messages,
                max_tokens=self.output_tokens,
                sampling=sampling,
                ignore_eos=self.ignore_eos,
                cache_prompt=self.cache_prompt,
                endpoint=self.endpoint,
                prompt_id=p.id,
                top_logprobs=self.logprobs,
            )
            seq += 1


def builtin_dir() -> Path:
    """Where the built-in scenarios live: the repository's ``scenarios/`` or the packaged copy."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package.parent / "scenarios", package / "_builtin_scenarios"):
        if candidate.is_dir():
            return candidate
    raise ConfigError("built-in scenarios not found; reinstall infermeter")


def list_builtin() -> list[Path]:
    """Every built-in scenario file, sorted by name."""
    return sorted(builtin_dir().glob("*.yaml"))


def resolve_scenario(name_or_path: str) -> Path:
    """A path as given when it looks like one, else the built-in scenario of that name."""
    if name_or_path.endswith((".yaml", ".yml")) or "/" in name_or_path:
        path = Path(name_or_path)
        if not path.is_file():
            raise ConfigError(f"scenario file {path} does not exist")
        return path
    known = {p.stem: p for p in list_builtin()}
    if name_or_path not in known:
        raise UnknownNameError("scenario", name_or_path, list(known))
    return known[name_or_path]


def _load_prompt_files(scenario_path: Path, ref: PromptFile, node: yaml.Node | None) -> list[Prompt]:
    prompts: list[Prompt] = []
    for name in ref.paths():
        path = (scenario_path.parent / name).resolve()
        if not path.is_file():
            line = line_of(node, ("prompts", "file"))
            raise ConfigError(f"field 'prompts.file': {name} not found", location=f"{scenario_path}:{line}")
        prompts.extend(_load_prompt_file(path))
    return prompts


def _load_prompt_file(path: Path) -> list[Prompt]:
    data, pnode = read_yaml(path)
    if not isinstance(data, list) or not data:
        raise ConfigError("a prompt file must be a non-empty YAML list", location=f"{path}:1")
    stem = path.stem
    out: list[Prompt] = []
    for i, item in enumerate(data):
        raw = {"id": f"{stem}-{i:03d}", "text": item} if isinstance(item, str) else item
        try:
            out.append(Prompt.model_validate(raw))
        except ValidationError as e:
            err = e.errors()[0]
            line = line_of(pnode, (i, *err["loc"]))
            raise ConfigError(f"prompt {i}: {describe_error(err)}", location=f"{path}:{line}") from e
    return out


def load_scenario(path: Path) -> Scenario:
    """Parse, validate and resolve one scenario file; raise one ConfigError naming file, line and field."""
    data, node = read_yaml(path)
    scenario = validate(Scenario, data, node, path, "scenario")
    if isinstance(scenario.prompts, PromptFile):
        scenario.prompts = list(_load_prompt_files(path, scenario.prompts, node))
    scenario.source = str(path)
    return scenario
