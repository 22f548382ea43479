"""The ``sim`` backend: drives the simulator (``agent.sim``), starting its server where none is given.

The server (``agent.sim.server``, or ``infermeter sim-server``) speaks OpenAI SSE and Ollama NDJSON, times
every token from its declared model (``agent.sim.model``), and can log the moment each chunk left it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from agent.backends.base import Backend, CliContext, HttpBackendArgs, register
from agent.backends.child import ChildServer
from agent.backends.ollama import OllamaArgs, OllamaBackend
from agent.backends.openai import OpenAIArgs, OpenAIBackend
from agent.core.record import GenerationRequest, StreamEvent
from agent.core.rundir import RunDir
from agent.sim.model import SimModel
from agent.transport.probe import ArrivalProbe
from agent.transport.socket_clock import clock

__all__ = ["SimArgs", "SimBackend"]


class SimArgs(HttpBackendArgs):
    """Arguments of the ``sim`` backend: the model it serves and the protocol it speaks."""

    protocol: Literal["openai", "ollama"] = "openai"
    base_url: str | None = Field(None, description="drive a running `infermeter sim-server`; None starts one")
    sim: SimModel = Field(default_factory=SimModel)
    emission_log: Path | None = Field(None, description="JSONL of every chunk's send time (ground truth)")
    startup_timeout_s: float = Field(30.0, gt=0)
    log_path: Path | None = None

    @classmethod
    def from_cli(cls, ctx: CliContext) -> dict[str, object]:
        """``--base-url`` where given (a running ``sim-server``); the simulator's log in the run directory."""
        args = {**super().from_cli(ctx), "log_path": RunDir(ctx.out).simulator_log}
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
        self._child = ChildServer("agent.sim.server", "simulator", log_path=args.log_path)
        self._client: Backend | None = None
        #: the probe the client's connections report to, the same before and after start
        self.arrivals = ArrivalProbe()
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
            client = OpenAIBackend(OpenAIArgs(**common), arrivals=self.arrivals)
        else:
            client = OllamaBackend(
                OllamaArgs(**common, cold_start_load_ms=self.args.sim.load_ms / 2 or 500.0),
                arrivals=self.arrivals,
            )
        await client.start()
        self._client = client

    async def close(self) -> None:
        """Close the client and stop the child; safe to call twice."""
        if self._client is not None:
            await self._client.close()
            self._client = None
        await self._child.stop()

    def describe(self) -> dict[str, object]:
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
