"""What a load shape is, the plan it draws work from, what it may ask of the runner, and the registry.

A load shape decides *when* work is issued (clients in a closed loop, arrivals on a schedule, agent
chains, batches); the runner decides how one request is measured and recorded. A shape also answers the
questions asked of it before a run: its unit of work, how many records a run of it writes, how many
requests it keeps in flight at most, and which request shapes a compiling backend should see first.
Shapes register under a name; ``shape_name`` says which one a scenario uses.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from agent.core.errors import UnknownNameError
from agent.core.record import GenerationRequest, RequestRecord, Stage
from agent.core.scenario import MAX_IN_FLIGHT, Scenario

__all__ = [
    "SHAPES",
    "BatchOf",
    "ChainFailure",
    "ChainStep",
    "Driver",
    "LoadShape",
    "Plan",
    "RequestShapes",
    "Shape",
    "Share",
    "Turn",
    "batch_text",
    "ceil_units",
    "register",
    "shape",
    "shape_name",
    "until",
]


@dataclass(slots=True)
class Plan:
    """Labels each unit of work as it is issued.

    ``count`` units (or until ``deadline``) of one stage, then ``cooldown`` more, then None (stop).
    """

    stage: Stage
    count: int | None
    deadline_ns: int | None = None
    cooldown: int = 0
    issued: int = 0
    cooled: int = 0

    def take(self, at_ns: int) -> Stage | None:
        """The stage of the next unit issued at ``at_ns``, or None when the plan is done."""
        if (self.count is None or self.issued < self.count) and (
            self.deadline_ns is None or at_ns < self.deadline_ns
        ):
            self.issued += 1
            return self.stage
        if self.cooled < self.cooldown:
            self.cooled += 1
            return "cooldown"
        return None

    def bound(self) -> int | None:
        """How many units the plan issues at most (None when bound by time)."""
        return None if self.count is None else self.count + self.cooldown


@dataclass(frozen=True, slots=True)
class Share:
    """Worker ``index`` of ``count``: every ``count``-th unit of the run, from ``index``."""

    index: int = 0
    count: int = 1

    def of(self, n: int) -> int:
        """How many of ``n`` units (0, 1, ... n - 1) fall to this worker."""
        return len(range(self.index, n, self.count))


@dataclass(frozen=True, slots=True)
class ChainStep:
    """Which agent chain a request belongs to, and its step in it."""

    chain_id: str
    step: int


@dataclass(frozen=True, slots=True)
class BatchOf:
    """Which batch a request was sent in, and how many prompts the batch held."""

    batch_id: str
    size: int


@dataclass(frozen=True, slots=True)
class Turn:
    """Which conversation a request belongs to, and its turn in it."""

    conversation_id: str
    turn: int


@dataclass(frozen=True, slots=True)
class ChainFailure:
    """Why an agent chain ended early, and at which step (0-based: the steps finished before it)."""

    reason: str
    failed_step: int


class Driver(Protocol):
    """What a load shape may ask of the runner: the scenario, requests, and measuring them."""

    scenario: Scenario
    #: a replay's send times, seconds from the stage's start (None: the scenario's load decides)
    offsets: Iterable[float] | None
    #: which part of the run's units this driver issues (worker processes split one schedule)
    share: Share

    def next_request(self) -> GenerationRequest | None:
        """The next request of the workload, or None when it is used up."""

    def next_unit(self) -> int:
        """A new unit (chain, batch, conversation) number: 0, 1, 2 ... in one process.

        Worker ``k`` of ``n`` numbers its units ``k, k + n, ...``.
        """

    async def one(
        self,
        request: GenerationRequest,
        stage: Stage,
        *,
        intended_ns: int | None = None,
        chain: ChainStep | None = None,
        batch: BatchOf | None = None,
        keep_text: bool | None = None,
        conversation: Turn | None = None,
        before_ns: int | None = None,
    ) -> RequestRecord | None:
        """Send and measure one request; its record (a chain step's or a turn's), or None when queued.

        With ``before_ns``, a request whose send time would come at or after it is counted as not sent.
        """

    async def batched(self, requests: list[GenerationRequest], stage: Stage, batch: BatchOf) -> None:
        """Send ``requests`` as one batched call of the backend and measure it as one record."""

    def chain_done(
        self,
        chain_id: str,
        stage: Stage,
        t0_ns: int,
        think_ns: int,
        records: list[RequestRecord],
        failure: ChainFailure | None,
    ) -> None:
        """An agent chain ended (``failure`` when it ended early); write its chain record."""

    def not_sent(self) -> None:
        """Count a request that was due before the end but never sent (no free worker in time)."""


#: What a run will send, one of each kind: single requests, and the prompts of each batched call.
RequestShapes = tuple[list[GenerationRequest], list[list[str]]]


class LoadShape(Protocol):
    """A load shape as the run sees it: its questions answered before the load, then the load itself."""

    #: what one unit of work is: a request, a chain, a batch or a conversation
    unit: str

    def units(self, sc: Scenario, records: int) -> int:
        """The units of work that make ``records`` records."""

    def size(self, sc: Scenario) -> int:
        """How many of the scenario's ``requests`` one unit stands for (a chain's steps, batch's prompts)."""

    def expected(self, sc: Scenario) -> int | None:
        """How many records a count-bounded run of ``sc`` writes (None when bounded by time)."""

    def in_flight(self, sc: Scenario) -> int:
        """The most requests a run of ``sc`` keeps in flight at once."""

    def request_shapes(self, sc: Scenario, requests: list[GenerationRequest] | None = None) -> RequestShapes:
        """One of each request a run of ``sc`` sends (``requests``: a replay's own)."""

    async def run(self, driver: Driver, plan: Plan, origin_ns: int) -> None:
        """Issue the plan's units through the driver; ``origin_ns`` is the stage's start."""


class Shape:
    """A load shape's answers for one request per unit; a shape of bigger units overrides them."""

    unit: str = "request"

    def units(self, sc: Scenario, records: int) -> int:
        """The units of work that make ``records`` records."""
        return ceil_units(records, self.size(sc))

    def size(self, sc: Scenario) -> int:
        """One request per unit."""
        return 1

    def records(self, sc: Scenario, units: int) -> int | None:
        """The records ``units`` units of work write (None: not known before the run)."""
        return units

    def expected(self, sc: Scenario) -> int | None:
        """How many records a count-bounded run of ``sc`` writes (None when bounded by time)."""
        if sc.requests is None:
            return None
        made = self.records(sc, self.units(sc, sc.requests) + sc.cooldown)
        return None if made is None else sc.warmup + made

    def in_flight(self, sc: Scenario) -> int:
        """An open loop's in-flight cap, else one request per client."""
        if sc.load.open_loop:
            return sc.load.max_concurrency or MAX_IN_FLIGHT
        return sc.concurrency

    def request_shapes(self, sc: Scenario, requests: list[GenerationRequest] | None = None) -> RequestShapes:
        """One request per prompt (a replay's own requests when given)."""
        if requests is None:
            requests = list(itertools.islice(sc.requests_iter(), len(sc.prompt_list())))
        return requests, []

    async def run(self, driver: Driver, plan: Plan, origin_ns: int) -> None:
        """Issue the plan's units through the driver (each shape's own)."""
        raise NotImplementedError


def batch_text(request: GenerationRequest) -> str:
    """The text a batched call sends for one request: its prompt, or its messages' contents."""
    if request.prompt is not None:
        return request.prompt
    return "\n\n".join(m.get("content", "") for m in request.messages or [])


def ceil_units(records: int, size: int) -> int:
    """Units of ``size`` requests each that make ``records`` records (the last one may be short)."""
    return math.ceil(records / size)


#: Load shapes by name.
SHAPES: dict[str, LoadShape] = {}

_S = TypeVar("_S", bound=Shape)


def register(name: str) -> Callable[[type[_S]], type[_S]]:
    """Register a load shape class under ``name`` (a class decorator; one instance serves every run)."""

    def add(cls: type[_S]) -> type[_S]:
        SHAPES[name] = cls()
        return cls

    return add


def shape_name(sc: Scenario, *, replay: bool = False) -> str:
    """Which load shape a scenario's measured stage uses."""
    if sc.agent is not None:
        return "chain"
    if sc.conversations:
        return "conversation"
    if sc.batch is not None:
        return "batch"
    if replay:
        return "trace"
    return "open" if sc.load.open_loop else "closed"


def shape(name: str) -> LoadShape:
    """The load shape registered as ``name``."""
    try:
        return SHAPES[name]
    except KeyError:
        raise UnknownNameError("load shape", name, sorted(SHAPES)) from None


async def until(t_ns: int) -> None:
    """Sleep until ``perf_counter_ns() >= t_ns``, never before.

    Loop timers may fire up to a tick early, so the last millisecond or two is spent yielding to other
    tasks rather than sending ahead of schedule.
    """
    while (delay := t_ns - time.perf_counter_ns()) > 0:  # noqa: ASYNC110 - a deadline, not an event
        await asyncio.sleep(delay / 1e9 - 0.001 if delay > 2_000_000 else 0)
