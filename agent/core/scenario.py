"""Load and validate ``scenarios/*.yaml``; errors name the file, line and field before any request is sent."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)

from agent.core.arrivals import geometric_series, ramp_rate
from agent.core.durations import Duration, PositiveDuration, parse_duration
from agent.core.errors import ConfigError, UnknownNameError
from agent.core.overrides import Flag
from agent.core.record import DEFAULT_TEXT_CAP, GenerationRequest
from agent.core.redact import is_secret_key, remember
from agent.core.workload import DatasetWorkload, Workload, WorkPrompt
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
    "RequestExtras",
    "Scenario",
    "Slo",
    "Sweep",
    "Targets",
    "Task",
    "builtin_corpus",
    "builtin_dir",
    "corpus_from_prompts",
    "list_builtin",
    "load_scenario",
    "parse_duration",
    "resolve_scenario",
]

#: Most requests one run keeps in flight (closed-loop clients, or open-loop workers at most).
MAX_IN_FLIGHT = 4096
#: Most requests one run may ask for (a billion: days of load at any rate a client reaches).
MAX_REQUESTS = 1_000_000_000


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

    arrival: Annotated[
        Literal["closed", "constant", "poisson", "gamma"], Flag("--arrival", "load model (default: closed)")
    ] = "closed"
    rate: Annotated[float | None, Flag("--rate", "open loop: requests per second")] = Field(
        None, gt=0, le=100_000, description="open loop: target requests per second"
    )
    burstiness: Annotated[float, Flag("--burstiness", "gamma: shape (1 = Poisson, < 1 burstier)")] = Field(
        1.0, gt=0, le=1000, description="gamma: shape; 1 = Poisson, < 1 burstier"
    )
    max_concurrency: Annotated[int | None, Flag("--max-concurrency", "open loop: in-flight cap")] = Field(
        None, ge=1, le=MAX_IN_FLIGHT, description=f"open loop: in-flight cap (default {MAX_IN_FLIGHT})"
    )
    think_time: Annotated[
        Duration, Flag("--think-time", "closed loop: pause per client between requests, e.g. 500ms")
    ] = Field(0.0, description="closed loop: pause per client between requests")
    seed: Annotated[int, Flag("--seed", "arrival schedule seed")] = 0
    lag_limit_ms: Annotated[float, Flag("--lag-limit-ms", "schedule-lag p99 above this: not trustworthy")] = (
        Field(
            10.0,
            gt=0,
            description="open loop: a stage whose schedule-lag p99 exceeds this is not trustworthy",
        )
    )
    idle_gap: Duration = Field(
        None, description="a request sent after this long with nothing in flight counts as a cold start"
    )
    ramp: Duration = Field(
        None,
        description="rise linearly to the load over this long at the start of the measured stage: clients "
        "join one by one (closed loop), or the rate climbs from ramp_from (open loop)",
    )
    ramp_from: float = Field(0.0, ge=0, description="open loop: the rate a ramp starts from")

    @model_validator(mode="after")
    def _rate_for_open_loop(self) -> Load:
        if self.arrival != "closed" and self.rate is None:
            raise ValueError(f"arrival '{self.arrival}' needs a rate (requests per second)")
        if self.think_time is not None and self.think_time < 0:
            raise ValueError("think_time must not be negative")
        if self.rate is not None and self.ramp_from > self.rate:
            raise ValueError("ramp_from must not be above the rate it ramps to")
        return self

    def rate_at(self, t: float) -> float | None:
        """Open loop: the rate in effect ``t`` seconds into the measured stage (a ramp rises to ``rate``)."""
        if self.rate is None:
            return None
        return ramp_rate(t, self.rate, self.ramp or 0.0, self.ramp_from)

    @property
    def open_loop(self) -> bool:
        """True for rate-driven arrivals."""
        return self.arrival != "closed"


class Slo(_Strict):
    """Service-level objectives: goodput is the share of requests meeting every one that is set."""

    ttft_ms: Annotated[float | None, Flag("--slo-ttft-ms", "goodput: TTFT objective")] = Field(None, gt=0)
    tpot_ms: Annotated[float | None, Flag("--slo-tpot-ms", "goodput: TPOT objective")] = Field(None, gt=0)
    e2e_ms: Annotated[float | None, Flag("--slo-e2e-ms", "goodput: E2E objective")] = Field(None, gt=0)
    percentile: float = Field(95.0, gt=0, lt=100, description="the percentile a sweep holds against the SLO")


class Targets(_Strict):
    """What a run's summary holds its records against: the lengths, objectives and load a scenario set.

    Built from a scenario's normalised config (``Targets.of``), so a summary made long after the run,
    from its manifest, reads the same targets the run had. ``Targets()`` is a run with none known.
    """

    workload: bool = False
    models: list[str] = Field(default_factory=list)
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    #: the objectives set (ttft_ms, tpot_ms, e2e_ms), unset ones left out
    slo: dict[str, float] = Field(default_factory=dict)
    #: None where the load is not known (a summary without a manifest); ``trace`` for a replay
    arrival: str | None = None
    rate: float | None = None
    burstiness: float | None = None
    lag_limit_ms: float | None = None
    max_concurrency: int | None = None

    @classmethod
    def of(cls, normalised: dict[str, Any], *, trace: bool = False) -> Targets:
        """The targets of a scenario's normalised config (``Scenario.normalised``, or a manifest's copy)."""
        load = normalised.get("load") or {}
        slo = normalised.get("slo") or {}
        return cls(
            workload=normalised.get("workload") is not None,
            models=sorted(normalised.get("models") or {}),
            prompt_tokens=normalised.get("prompt_tokens"),
            output_tokens=normalised.get("output_tokens"),
            slo={k: slo[k] for k in ("ttft_ms", "tpot_ms", "e2e_ms") if slo.get(k) is not None},
            arrival="trace" if trace else load.get("arrival", "closed"),
            rate=load.get("rate"),
            burstiness=load.get("burstiness"),
            lag_limit_ms=load.get("lag_limit_ms"),
            max_concurrency=load.get("max_concurrency"),
        )


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


class RequestExtras(_Strict):
    """What every request carries besides the prompt: extra JSON body fields and HTTP headers.

    For example vLLM's ``min_tokens`` or ``repetition_penalty``, or a LoRA adapter's name as ``model``.
    A header whose name says it holds a secret (``Authorization``, ``X-Api-Key``) is masked wherever it
    would be shown; write ``${VAR}`` to take a value from the environment instead of the file.
    """

    body: dict[str, Any] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)

    def resolved_headers(self) -> dict[str, str]:
        """Headers with ``${VAR}`` taken from the environment; secret ones remembered for masking."""
        import os

        out: dict[str, str] = {}
        for key, value in self.headers.items():
            value = re.sub(r"\$\{(\w+)\}", lambda m: os.environ.get(m[1], ""), value)
            if is_secret_key(key) or key.lower() == "authorization":
                remember(value.removeprefix("Bearer ").strip())
                remember(value)
            out[key] = value
        return out


class Scenario(_Strict):
    """A workload: what to send, how much, how fast, and what to keep."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_\-]*$")
    description: str = ""
    endpoint: Literal["chat", "completions"] = "chat"
    system: str | None = None
    prompts: (
        Annotated[list[Prompt | Annotated[str, Field(pattern=r"\S")]], Field(min_length=1)]
        | PromptFile
        | None
    ) = None
    workload: Workload | None = Field(
        None, description="synthetic lengths, shared prefixes or a dataset, instead of a prompt list"
    )
    request: RequestExtras = RequestExtras()
    models: dict[Annotated[str, Field(min_length=1)], Annotated[float, Field(gt=0)]] | None = Field(
        None,
        description="several model names (LoRA adapters) with traffic weights, drawn per request with the "
        "load seed; figures per model in the summary",
    )
    stream: bool = Field(True, description="False: ask for whole answers (TTFT is then the whole response)")
    prompt_tokens: int | None = Field(None, ge=1, description="target prompt length, reported against")
    output_tokens: Annotated[int, Flag("--max-tokens", "output tokens per request")] = Field(
        128, ge=1, le=32768, description="max_tokens sent with each request"
    )
    requests: Annotated[int | None, Flag("--requests", "steady-state requests (overrides the scenario)")] = (
        Field(32, ge=1, le=MAX_REQUESTS)
    )
    duration: Annotated[
        Duration, Flag("--duration", "stop issuing requests after this long, e.g. 30s, 2m")
    ] = Field(None, description="stop issuing new requests after this long")
    concurrency: Annotated[int, Flag("--concurrency", "closed-loop clients (agents for agent chains)")] = (
        Field(1, ge=1, le=MAX_IN_FLIGHT)
    )
    warmup: Annotated[int, Flag("--warmup", "warmup requests, recorded apart")] = Field(
        2, ge=0, le=MAX_REQUESTS
    )
    cooldown: Annotated[int, Flag("--cooldown", "requests after steady under the same load, kept apart")] = (
        Field(
            0,
            ge=0,
            le=MAX_REQUESTS,
            description="requests issued after steady under the same load, kept apart",
        )
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
    #: the workload's prompts once made with the server's tokenizer (``agent.run.prompts``)
    _made: list[WorkPrompt] | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _bounded(self) -> Scenario:
        if (self.prompts is None) == (self.workload is None):
            raise ValueError("give prompts or a workload (one of them)")
        if self.conversations and (self.agent is not None or self.batch is not None):
            raise ValueError("conversations are their own shape; drop the agent or batch block")
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
    def conversations(self) -> bool:
        """True when the workload replays whole conversations, one user per client."""
        return isinstance(self.workload, DatasetWorkload) and self.workload.turns == "all"

    @property
    def shape(self) -> Literal["single", "agent", "batch", "conversation"]:
        """How each unit of work is sent: single requests, agent chains, batches or conversations."""
        if self.conversations:
            return "conversation"
        return "agent" if self.agent is not None else "batch" if self.batch is not None else "single"

    @property
    def made(self) -> list[WorkPrompt] | None:
        """The workload's prompts once made (None before, or without a workload)."""
        return self._made

    def use_prompts(self, made: list[WorkPrompt]) -> None:
        """Send these prompts (made from the workload) in order, cycling."""
        if not made:
            raise ConfigError("the workload made no prompts", location=self.source)
        self._made = made

    def load_data(self, base: Path) -> None:
        """Read a dataset workload's file (a relative path from ``base``); errors before any run starts."""
        if isinstance(self.workload, DatasetWorkload):
            self.workload.load(base)

    def prompt_list(self) -> list[Prompt]:
        """Prompts with ids (inline strings get ``<name>-NNN``); file prompts must be resolved first.

        A workload's prompts once made (their first turns), else none.
        """
        if self.prompts is None:
            return [Prompt(id=p.id, text=p.text) for p in self._made or []]
        if isinstance(self.prompts, PromptFile):
            raise ConfigError("prompt file not resolved; load scenarios with load_scenario()")
        return [
            p if isinstance(p, Prompt) else Prompt(id=f"{self.name}-{i:03d}", text=p)
            for i, p in enumerate(self.prompts)
        ]

    def normalised(self) -> dict[str, Any]:
        """The fully resolved config (defaults filled, prompts inlined) that the hash covers."""
        data = self.model_dump(mode="json")
        if self.prompts is not None:
            data["prompts"] = [p.model_dump(exclude_none=True) for p in self.prompt_list()]
        else:
            data.pop("prompts")
        if self.workload is None:
            data.pop("workload")
        if data.get("request") == {"body": {}, "headers": {}}:  # unused: the hash stays what it was
            data.pop("request")
        for key, default in (("models", None), ("stream", True)):  # likewise
            if data.get(key, default) == default:
                data.pop(key, None)
        load = data["load"]
        if load.get("ramp") is None and not load.get("ramp_from"):
            load.pop("ramp", None)
            load.pop("ramp_from", None)
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
        old, new = self.workload, out.workload
        if isinstance(old, DatasetWorkload) and isinstance(new, DatasetWorkload) and new.path == old.path:
            new._data = old._data  # the same file: not read again
        return out

    def requests_iter(self) -> Iterator[GenerationRequest]:
        """Endless requests cycling through the prompts (or the workload's made prompts) in order."""
        if self.workload is not None and self._made is None:
            raise ConfigError("the workload's prompts are made once the backend is up", location=self.source)
        made = self._made or [WorkPrompt(p.id, p.text) for p in self.prompt_list()]
        sampling = self.sampling.model_dump(exclude_none=True)
        extra_body = dict(self.request.body) or None
        headers = self.request.resolved_headers() or None
        pick = self._model_picker()
        seq = 0
        while True:
            p = made[seq % len(made)]
            system = p.system if p.system is not None else self.system
            messages = None
            if self.endpoint == "chat":
                messages = [{"role": "user", "content": p.text}]
                if system:
                    messages.insert(0, {"role": "system", "content": system})
            yield GenerationRequest(
                request_id=f"{self.name}-{seq:06d}",
                prompt=((system + "\n\n" if system and p.system is not None else "") + p.text)
                if self.endpoint == "completions"
                else None,
                messages=messages,
                max_tokens=p.max_tokens or self.output_tokens,
                sampling=sampling,
                ignore_eos=self.ignore_eos,
                cache_prompt=self.cache_prompt,
                endpoint=self.endpoint,
                prompt_id=p.id,
                prompt_tokens_target=p.prompt_tokens,
                top_logprobs=self.logprobs,
                prefix_group=p.group,
                template_tokens=p.template_tokens,
                turns=p.turns,
                answer=p.answer,
                extra_body=extra_body,
                headers=headers,
                model=pick(),
                stream=self.stream,
            )
            seq += 1

    def _model_picker(self) -> Callable[[], str | None]:
        """Draws each request's model by weight (seeded), or None when the backend's model serves all."""
        if not self.models:
            return lambda: None
        import random

        rng = random.Random(self.load.seed)
        names, weights = list(self.models), list(self.models.values())
        return lambda: rng.choices(names, weights)[0]


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
    scenario.load_data(path.parent)
    return scenario


#: The prompt files whose prose makes the built-in corpus (``scenarios/data/corpus.txt``, kept equal to
#: them by a test): the shipped documents, chat questions and agent tasks.
CORPUS_FILES = ("documents.yaml", "chat.yaml", "agent.yaml")


def corpus_from_prompts() -> str:
    """The built-in corpus as the prompt files make it (what ``corpus.txt`` holds)."""
    data = builtin_dir() / "data"
    return "\n\n".join(p.text for name in CORPUS_FILES for p in _load_prompt_file(data / name)) + "\n"


def builtin_corpus() -> str:
    """The prose synthetic prompts are cut from, when a workload names no corpus of its own.

    Plain text, so making prompts needs no YAML parser in a client that never loaded a scenario file.
    """
    return (builtin_dir() / "data" / "corpus.txt").read_text(encoding="utf-8")
