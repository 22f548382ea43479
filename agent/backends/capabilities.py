"""What a backend may do beyond the ``Backend`` protocol, one protocol per ability.

A caller asks ``isinstance(backend, Warming)`` and gets a typed answer; a backend gains an ability by
defining the method, nothing else. Each ability's evidence is a small frozen type whose ``to_dict`` is
what the manifest keeps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from agent.core.record import GenerationRequest
from agent.transport.probe import ArrivalProbe

__all__ = [
    "BatchPrefill",
    "BatchPrefilling",
    "CacheReset",
    "ContextBound",
    "PrefixCacheResetting",
    "ServesMetrics",
    "WarmPass",
    "Warming",
    "WatchesArrivals",
]


@dataclass(slots=True, frozen=True)
class BatchPrefill:
    """One batched prefill: how many prompts, their padded shape, real tokens and the forward time."""

    prompts: int
    padded_len: int
    prompt_tokens: int
    prefill_ms: float


@dataclass(slots=True, frozen=True)
class WarmPass:
    """What compiling and warming every request shape took, before the run's clock started."""

    ms: float
    compile_s: float
    prompt_shapes: int
    batch_shapes: int
    frames_compiled: int
    graphs: int
    recompiles: int
    graph_breaks: int

    def to_dict(self) -> dict[str, float | int]:
        """The manifest's ``compile.warm`` block."""
        return dataclasses.asdict(self)

    def line(self) -> str:
        """The console line."""
        return (
            f"compiled and warmed before the clock: {self.ms / 1000:.1f} s "
            f"({self.compile_s:.1f} s compiling), {self.prompt_shapes} prompt shapes, "
            f"{self.batch_shapes} batch shapes, {self.frames_compiled} frames compiled, "
            f"{self.graph_breaks} graph breaks"
        )


@dataclass(slots=True, frozen=True)
class CacheReset:
    """One attempt to empty the server's prefix cache: whether it worked, how, or why not."""

    ok: bool
    how: str | None
    why: str | None = None

    def to_dict(self) -> dict[str, object]:
        """The manifest's entry (``why`` only when it failed)."""
        out: dict[str, object] = {"ok": self.ok, "how": self.how}
        if self.why is not None:
            out["why"] = self.why
        return out


@runtime_checkable
class BatchPrefilling(Protocol):
    """Runs several prompts through one padded forward pass (the batch-prefill workload's ``batched``)."""

    async def prefill_batch(self, prompts: list[str]) -> BatchPrefill:
        """One batched prefill over ``prompts``."""


@runtime_checkable
class Warming(Protocol):
    """Compiles before the clock starts, for every shape the run will meet."""

    async def warm(
        self, requests: Sequence[GenerationRequest], batches: Sequence[list[str]]
    ) -> WarmPass | None:
        """Compile and run each shape once; None when there was nothing to do."""


@runtime_checkable
class ServesMetrics(Protocol):
    """A server with its own Prometheus series."""

    @property
    def metrics_url(self) -> str | None:
        """Where the series are (None while the server is not up)."""


@runtime_checkable
class PrefixCacheResetting(Protocol):
    """A server whose prefix cache can be emptied between stages."""

    async def reset_prefix_cache(self) -> CacheReset:
        """Empty it the way the engine offers."""


@runtime_checkable
class ContextBound(Protocol):
    """A server that says how many tokens one request may hold (prompt and output together)."""

    @property
    def context_tokens(self) -> int | None:
        """The context length, or None when the server does not say."""


@runtime_checkable
class WatchesArrivals(Protocol):
    """A backend whose connections report to an arrival probe; the runner calls it between its steps."""

    @property
    def arrivals(self) -> ArrivalProbe:
        """The probe its connections watch with."""
