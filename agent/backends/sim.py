"""The simulator: a declared timing model served over loopback, and the ``sim`` backend that drives it.

The server (``agent.backends._sim_server``, or ``infermeter sim-server``) speaks OpenAI SSE and Ollama
NDJSON, times every token from the model below, and can log the moment each chunk left it — the ground
truth that timing-accuracy tests and the load-engine benchmarks compare the client against.
"""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.backends.base import Backend, CliContext, HttpBackendArgs, register
from agent.backends.child import ChildServer
from agent.backends.http import clock
from agent.backends.ollama import OllamaArgs, OllamaBackend
from agent.backends.openai import OpenAIArgs, OpenAIBackend
from agent.errors import ConfigError
from agent.record import GenerationRequest, StreamEvent

__all__ = ["Dist", "SimArgs", "SimBackend", "SimModel"]

DistKind = Literal["fixed", "uniform", "normal", "lognormal", "exponential"]


class Dist(BaseModel):
    """A non-negative duration or count distribution, in the unit of the field that holds it.

    Written as a number (fixed), ``"kind:mean"`` or ``"kind:mean:sd"``: ``lognormal:100:20`` has mean 100
    and standard deviation 20; ``uniform:100:20`` spans 80–120; ``exponential:100`` has mean 100.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: DistKind = "fixed"
    mean: float = Field(ge=0)
    sd: float = Field(0.0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _from_short(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("expected a number or 'kind:mean[:sd]'")
        if isinstance(value, int | float):
            return {"kind": "fixed", "mean": value}
        if isinstance(value, str):
            parts = value.split(":")
            try:
                if len(parts) == 1:
                    return {"kind": "fixed", "mean": float(parts[0])}
                if len(parts) in (2, 3):
                    return {
                        "kind": parts[0],
                        "mean": float(parts[1]),
                        "sd": float(parts[2]) if parts[2:] else 0,
                    }
            except ValueError:
                pass
            raise ValueError(f"{value!r} is not a number or 'kind:mean[:sd]' (e.g. lognormal:100:20)")
        return value

    def sample(self, rng: random.Random) -> float:
        """One draw, never negative."""
        if self.kind == "fixed" or (self.sd == 0 and self.kind != "exponential"):
            return self.mean
        if self.kind == "uniform":
            return max(0.0, rng.uniform(self.mean - self.sd, self.mean + self.sd))
        if self.kind == "normal":
            return max(0.0, rng.gauss(self.mean, self.sd))
        if self.kind == "exponential":
            return rng.expovariate(1.0 / self.mean) if self.mean > 0 else 0.0
        # lognormal with the given mean and sd of the variable itself
        if self.mean <= 0:
            return 0.0
        sigma2 = math.log(1.0 + (self.sd / self.mean) ** 2)
        return rng.lognormvariate(math.log(self.mean) - sigma2 / 2, math.sqrt(sigma2))


class SimModel(BaseModel):
    """What the simulated server does with each request; every time is in milliseconds."""

    model_config = ConfigDict(extra="forbid")

    model_name: str = "sim"
    ttft_ms: Dist = Field(Dist(mean=100.0), description="arrival → first token, before prompt-length cost")
    prefill_ms_per_token: float = Field(0.0, ge=0, description="added to TTFT per prompt token")
    itl_ms: Dist = Field(Dist(mean=10.0), description="gap between tokens")
    output_tokens: Dist | None = Field(None, description="tokens to emit; None honours max_tokens exactly")
    tokens_per_chunk: int = Field(1, ge=1, le=64, description="tokens carried by one streamed chunk")
    reasoning_tokens: int = Field(0, ge=0, description="the first N tokens are reasoning / thinking")
    chars_per_token: float = Field(4.0, gt=0, description="how prompt text is counted as tokens")
    load_ms: float = Field(0.0, ge=0, description="a cold start: delay + load_duration on the first request")
    error_rate: float = Field(0.0, ge=0, le=1, description="share of requests answered HTTP 500")
    drop_rate: float = Field(0.0, ge=0, le=1, description="share of streams cut halfway, connection dropped")
    stall_rate: float = Field(0.0, ge=0, le=1, description="share of streams that stall halfway")
    stall_ms: float = Field(5000.0, ge=0)
    precise: bool = Field(
        False,
        description="spin the last 1.5 ms before each chunk so it leaves within microseconds of its schedule "
        "(costs server CPU: give the simulator its own core)",
    )
    seed: int = 0


class SimArgs(HttpBackendArgs):
    """Arguments of the ``sim`` backend: the model it serves and the protocol it speaks."""

    protocol: Literal["openai", "ollama"] = "openai"
    base_url: str | None = Field(None, description="drive a running `infermeter sim-server`; None starts one")
    sim: SimModel = Field(default_factory=SimModel)
    emission_log: Path | None = Field(None, description="JSONL of every chunk's send time (ground truth)")
    startup_timeout_s: float = Field(30.0, gt=0)
    log_path: Path | None = None

    @classmethod
    def from_cli(cls, ctx: CliContext) -> dict[str, Any]:
        """``--base-url`` where given (a running ``sim-server``); the simulator's log in the run directory."""
        args = {**super().from_cli(ctx), "log_path": ctx.out / "simulator.log"}
        if ctx.base_url is not None:
            args["base_url"] = ctx.base_url
        return args

    @model_validator(mode="before")
    @classmethod
    def _flat_model_fields(cls, value: Any) -> Any:
        """Let ``--backend-arg ttft_ms=50`` set ``sim.ttft_ms``: model fields may be given flat."""
        if not isinstance(value, dict):
            return value
        flat = {k: value[k] for k in list(value) if k in SimModel.model_fields}
        if not flat:
            return value
        rest = {k: v for k, v in value.items() if k not in flat}
        sim = dict(rest.get("sim") or {})
        sim.update(flat)
        rest["sim"] = sim
        return rest


@register("sim", SimArgs)
class SimBackend:
    """Starts the simulator in a child process (unless given a URL) and streams from it."""

    name = "sim"

    def __init__(self, args: SimArgs) -> None:
        self.args = args
        self.model = args.sim.model_name
        self._child = ChildServer("agent.backends._sim_server", "simulator", log_path=args.log_path)
        self._client: Backend | None = None
        self.base_url = args.base_url
        self._vocab: dict[str, int] = {}
        self._pieces: list[str] = []

    async def start(self) -> None:
        """Start the simulator child (when no base_url), then the protocol client."""
        if self._client is not None:
            return
        if self.base_url is None:
            cfg = {
                "model": self.args.sim.model_dump(mode="json"),
                "emission_log": str(self.args.emission_log) if self.args.emission_log else None,
            }
            self.base_url = await self._child.start(cfg, self.args.startup_timeout_s)
        common = {
            "base_url": self.base_url,
            "model": self.model,
            "label": self.name,
            "connect_timeout_s": self.args.connect_timeout_s,
            "max_connections": self.args.max_connections,
        }
        client: Backend
        if self.args.protocol == "openai":
            client = OpenAIBackend(OpenAIArgs(**common))
        else:
            client = OllamaBackend(
                OllamaArgs(**common, cold_start_load_ms=self.args.sim.load_ms / 2 or 500.0)
            )
        await client.start()
        self._client = client

    async def close(self) -> None:
        """Close the client and stop the child; safe to call twice."""
        if self._client is not None:
            await self._client.close()
            self._client = None
        await self._child.stop()

    def describe(self) -> dict[str, Any]:
        """Manifest facts: the declared model is part of the run's evidence."""
        return {
            "backend": self.name,
            "model": self.model,
            "protocol": self.args.protocol,
            "base_url": self.base_url,
            "simulator_pid": self._child.pid,
            "sim_model": self.args.sim.model_dump(mode="json"),
            **clock(),
        }

    async def tokenize(self, text: str) -> list[int]:
        """The simulator's tokens: runs of ``chars_per_token`` characters, interned to ids."""
        step = max(1, round(self.args.sim.chars_per_token))
        ids: list[int] = []
        for i in range(0, len(text), step):
            piece = text[i : i + step]
            ids.append(self._vocab.setdefault(piece, len(self._vocab)))
        return ids

    async def detokenize(self, ids: list[int]) -> str:
        """Text of ids made by ``tokenize``."""
        if len(self._pieces) != len(self._vocab):
            self._pieces = sorted(self._vocab, key=self._vocab.__getitem__)
        return "".join(self._pieces[i] for i in ids)

    def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        """Stream through the protocol client bound to the simulator."""
        if self._client is None:
            raise RuntimeError("backend not started: call start() first")
        return self._client.stream(request)


def parse_model(values: dict[str, Any]) -> SimModel:
    """A SimModel from CLI-style values, with one clear error on bad input."""
    try:
        return SimModel.model_validate(values)
    except ValueError as e:
        raise ConfigError(f"invalid simulator model: {e}") from e
