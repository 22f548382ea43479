"""What the in-process backend and its torch engine share: arguments, results, events and the clock.

``transformers_local`` (the backend, imported without torch) and ``_torch_engine`` (imported on the
worker thread once torch is known to be there) both import this module and never each other's insides.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from pydantic import Field

from agent.backends.base import BackendArgs, CliContext
from agent.backends.builtin_model import BUILTIN_MODEL
from agent.core.errors import BackendError
from agent.core.record import Chunk, NativeTimings, StreamEnd, Usage

__all__ = [
    "BUILTIN_MODEL",
    "TransformersArgs",
    "chunk",
    "end_event",
    "error_for_missing",
    "native",
    "now_ns",
]


class TransformersArgs(BackendArgs):
    """Arguments of the ``transformers`` backend."""

    model: str = Field(
        BUILTIN_MODEL, description="a local dir, a .gguf file, an HF id (from the local cache)"
    )
    tokenizer: str | None = Field(None, description="defaults to the model's")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "float32"
    device: str = Field("auto", description="auto → cuda when available, else cpu")
    threads: int | None = Field(None, ge=1, description="torch CPU threads")
    compile: Literal["prefill", "all"] | None = None
    compile_backend: str = "inductor"
    pad_to_multiple: int | None = Field(
        None, ge=1, description="left-pad prompts to a multiple of this (shape buckets: fewer recompiles)"
    )
    cache_dir: Path = Field(
        Path.home() / ".cache" / "infermeter", description="where the built-in GGUF lives"
    )
    local_files_only: bool = Field(True, description="never download weights")
    chat_template: bool = Field(True, description="apply the tokenizer's chat template to chat requests")

    @classmethod
    def from_cli(cls, ctx: CliContext) -> dict[str, object]:
        """``--model`` and ``--compile`` where given (no connection pool: the model runs in-process)."""
        given = {"model": ctx.model, "compile": ctx.compile}
        return {k: v for k, v in given.items() if v is not None}


def native(
    prefill_ms: float,
    decode_ms: float,
    prompt_n: int,
    out_n: int,
    load_ms: float | None,
    compiled: str | None,
    *,
    queue_ms: float | None = None,
) -> NativeTimings:
    """The record's native timings for one in-process generation."""
    return NativeTimings(
        queue_ms=queue_ms,
        compiled=compiled,
        source="transformers",
        prefill_ms=prefill_ms,
        decode_ms=decode_ms,
        load_ms=load_ms,
        prompt_n=prompt_n,
        predicted_n=out_n,
        cold_start=load_ms is not None,
    )


def end_event(t_ns: int, timings: NativeTimings, finish: str) -> StreamEnd:
    """The closing event: counts come from the engine itself, so they are exact."""
    usage = Usage(prompt_tokens=timings.prompt_n, output_tokens=timings.predicted_n, source="engine")
    return StreamEnd(t_ns, usage=usage, native=timings, finish_reason=finish)


def chunk(t_ns: int, text: str) -> Chunk:
    """One generated token as a stream chunk (its text may be empty mid-character)."""
    return Chunk(t_ns, text)


def error_for_missing(model: str, e: BaseException) -> BackendError:
    """The one-line error for weights that cannot be loaded offline."""
    return BackendError(
        f"could not load model {model!r} offline ({e.__class__.__name__}: {e}); pass a local directory or "
        "a .gguf file with --model, or set backend arg local_files_only=false to allow downloads"
    )


def now_ns() -> int:
    """The clock every timing in this backend uses."""
    return time.perf_counter_ns()
