"""The Backend protocol the runner drives, the typed Args models, and the registry that builds backends."""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from agent.core.errors import ConfigError, UnknownNameError
from agent.core.record import GenerationRequest, StreamEvent
from agent.transport.framing import MAX_EVENT_BYTES

__all__ = [
    "Backend",
    "BackendArgs",
    "CliContext",
    "HttpBackendArgs",
    "args_type",
    "available",
    "create",
    "register",
]


@runtime_checkable
class Backend(Protocol):
    """What the runner needs from any backend.

    ``stream`` yields Chunk events for text-bearing pieces and exactly one StreamEnd, stamping each
    with ``time.perf_counter_ns()`` at the moment its bytes were read. Failures raise
    ``RequestFailedError`` with a degraded-record reason.
    """

    name: str
    model: str

    async def start(self) -> None:
        """Open connections or start the engine; called once before the first request."""

    async def close(self) -> None:
        """Release everything ``start`` acquired; safe to call twice."""

    def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        """Send one request and yield its events as they arrive."""

    def describe(self) -> dict[str, object]:
        """Facts for the run manifest (backend, model, quantisation, versions); never secrets."""


@dataclass(frozen=True, slots=True)
class CliContext:
    """What the command line and the environment give every backend to build its arguments from."""

    #: ``--base-url``, ``--model`` and ``--model-path`` (None when not given), ``--compile``
    base_url: str | None
    model: str | None
    model_path: Path | None
    compile: str | None
    #: ``INFERMETER__OPENAI__*`` defaults (the API key never leaves the process)
    openai_base_url: str | None
    openai_model: str | None
    openai_api_key: SecretStr | None
    cache_dir: Path
    #: the run directory, where a backend's own log goes
    out: Path
    #: the most requests the run keeps in flight, and whether that is an uncapped open loop's ceiling
    in_flight: int
    uncapped: bool
    #: some scenario of the run reuses the server's prompt cache (``cache_prompt``)
    cache_prompt: bool = False


class BackendArgs(BaseModel):
    """Base of every backend's typed arguments; unknown fields are errors.

    ``from_cli`` turns the common command-line flags into this backend's arguments; ``--backend-arg``
    values are laid over them, and the model validates the result.
    """

    model_config = ConfigDict(extra="forbid")

    @classmethod
    def from_cli(cls, ctx: CliContext) -> dict[str, object]:
        """The backend's arguments from the common flags (none by default)."""
        return {}


class HttpBackendArgs(BackendArgs):
    """Arguments shared by backends that speak HTTP."""

    connect_timeout_s: float = Field(10.0, gt=0)
    max_connections: int = Field(64, ge=1, description="connection pool size; at least the concurrency")
    max_event_bytes: int = Field(
        MAX_EVENT_BYTES,
        ge=1024,
        description="largest stream event (SSE) or line (NDJSON) a response may send; a larger one "
        "ends the request as invalid_response",
    )

    @classmethod
    def from_cli(cls, ctx: CliContext) -> dict[str, object]:
        """A connection pool that holds every request in flight."""
        return {"max_connections": max(64, ctx.in_flight)}


A = TypeVar("A", bound=BackendArgs)

#: Backends by name → the module that registers them, imported only when that backend is asked for.
_MODULES: dict[str, str] = {
    "openai": "agent.backends.openai",
    "embedded": "agent.backends.embedded",
    "ollama": "agent.backends.ollama",
    "sim": "agent.backends.sim",
    "transformers": "agent.backends.transformers_local",
}
_REGISTRY: dict[str, tuple[type[BackendArgs], Callable[[Any], Backend]]] = {}


def register(name: str, args_type: type[A]) -> Callable[[Callable[[A], Backend]], Callable[[A], Backend]]:
    """Register a backend factory (usually the class) under ``name`` with its Args model."""

    def deco(factory: Callable[[A], Backend]) -> Callable[[A], Backend]:
        _REGISTRY[name] = (args_type, factory)
        return factory

    return deco


def available() -> list[str]:
    """Names of every backend infermeter knows, whether or not its extras are installed."""
    return sorted(set(_MODULES) | set(_REGISTRY))


def _registered(name: str) -> tuple[type[BackendArgs], Callable[[Any], Backend]]:
    if name not in _REGISTRY:
        if name not in _MODULES:
            raise UnknownNameError("backend", name, available())
        importlib.import_module(_MODULES[name])
    return _REGISTRY[name]


def args_type(name: str) -> type[BackendArgs]:
    """The Args model of backend ``name`` (its module imported on first use)."""
    return _registered(name)[0]


def create(name: str, args: dict[str, object]) -> Backend:
    """Validate ``args`` against the backend's Args model and build it."""
    args_type, factory = _registered(name)
    try:
        parsed = args_type.model_validate(args)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"invalid arguments for backend '{name}': {problems}") from e
    return factory(parsed)
