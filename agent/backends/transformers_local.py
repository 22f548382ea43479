"""In-process Hugging Face transformers with the phase split of method §1.

``prefill_ms`` is one forward pass over the prompt (plus choosing the first token); ``decode_ms`` is the
KV-cache loop that produces the remaining tokens — exactly the requested count unless the request lets
the model stop at EOS. CUDA is synchronised at every boundary. The model runs in one worker thread, so
requests queue behind each other and that queueing is part of their wall-clock times (and is reported as
``queue_ms``); a request whose caller gave up stops before its next step.

``compile`` wraps the model in ``torch.compile``; the manifest and every record then carry the backend
requested, the backend that actually ran (``eager`` when compilation failed) and dynamo's counters — a
label alone is not evidence. ``warm`` compiles every shape a run will send before its clock starts.
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import structlog

from agent.backends.base import register
from agent.backends.capabilities import BatchPrefill, WarmPass
from agent.backends.inprocess import BUILTIN_MODEL, TransformersArgs, now_ns
from agent.core.errors import BackendUnavailableError, RequestFailedError
from agent.core.record import GenerationRequest, StreamEnd, StreamEvent

__all__ = ["BatchPrefill", "TransformersArgs", "TransformersBackend"]

logger = structlog.get_logger(__name__)

_INSTALL_HINT = "install torch first (pip install torch==2.13.0), then pip install 'infermeter[torch]'"


def _need_torch() -> None:
    for mod in ("torch", "transformers"):
        if importlib.util.find_spec(mod) is None:
            raise BackendUnavailableError(f"the transformers backend needs {mod}; {_INSTALL_HINT}")


@register("transformers", TransformersArgs)
class TransformersBackend:
    """Runs a causal LM in this process, one request at a time on a dedicated thread."""

    name = "transformers"

    def __init__(self, args: TransformersArgs) -> None:
        self.args = args
        self.model = Path(args.model).name if args.model != BUILTIN_MODEL else BUILTIN_MODEL
        self._pool: ThreadPoolExecutor | None = None
        self._engine: Any = None
        self._facts: dict[str, object] = {}
        self._cold = True

    async def start(self) -> None:
        """Load tokenizer and model on the worker thread (offline unless told otherwise)."""
        if self._pool is not None:
            return
        _need_torch()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="infermeter-transformers")
        loop = asyncio.get_running_loop()
        try:
            self._engine = await loop.run_in_executor(self._pool, self._load)
        except BaseException:
            await self.close()
            raise

    def _load(self) -> Any:
        from agent.backends import _torch_engine

        return _torch_engine.Engine.load(self.args)

    async def close(self) -> None:
        """Drop the model and stop the worker thread; safe to call twice."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        self._engine = None

    def describe(self) -> dict[str, object]:
        """Manifest facts: model, dtype, device, load time and the compile evidence."""
        if self._engine is None:
            return {"backend": self.name, "model": self.model}
        return {"backend": self.name, **self._engine.describe()}

    async def prefill_batch(self, prompts: list[str]) -> BatchPrefill:
        """One padded forward pass over several prompts (the batch-prefill workload)."""
        if self._engine is None or self._pool is None:
            raise RuntimeError("backend not started: call start() first")
        loop = asyncio.get_running_loop()
        result: BatchPrefill = await loop.run_in_executor(self._pool, self._engine.prefill_batch, prompts)
        return result

    async def warm(
        self, requests: Sequence[GenerationRequest], batches: Sequence[list[str]]
    ) -> WarmPass | None:
        """With ``compile``: compile and run every shape the run will meet, before its clock starts."""
        if self._engine is None or self._pool is None:
            raise RuntimeError("backend not started: call start() first")
        loop = asyncio.get_running_loop()
        result: WarmPass | None = await loop.run_in_executor(self._pool, self._engine.warm, requests, batches)
        return result

    async def tokenize(self, text: str) -> list[int]:
        """Token ids from the model's tokenizer (no special tokens)."""
        if self._engine is None:
            raise RuntimeError("backend not started: call start() first")
        return list(self._engine.tok.encode(text, add_special_tokens=False))

    async def count_prompt(
        self, *, text: str | None = None, messages: list[dict[str, str]] | None = None
    ) -> int | None:
        """Tokens the model is given for a prompt: its chat template and special tokens included."""
        if self._engine is None:
            raise RuntimeError("backend not started: call start() first")
        request = GenerationRequest(
            request_id="count", prompt=text, messages=messages, endpoint="chat" if messages else "completions"
        )
        return int(self._engine.encode(request).shape[1])

    async def detokenize(self, ids: list[int]) -> str:
        """Text of token ids."""
        if self._engine is None:
            raise RuntimeError("backend not started: call start() first")
        return str(self._engine.tok.decode(ids))

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        """Generate on the worker thread; tokens come back through a queue stamped where they were made."""
        if self._engine is None or self._pool is None:
            raise RuntimeError("backend not started: call start() first")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[StreamEvent | BaseException] = asyncio.Queue()
        cancel = threading.Event()

        def put(item: StreamEvent | BaseException) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        cold, self._cold = self._cold, False
        future = loop.run_in_executor(self._pool, self._generate, request, put, cancel, cold, now_ns())
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, StreamEnd):
                    break
        finally:
            cancel.set()
            if not future.done():
                future.cancel()

    def _generate(
        self,
        request: GenerationRequest,
        put: Callable[[StreamEvent | BaseException], None],
        cancel: threading.Event,
        cold: bool,
        submitted_ns: int,
    ) -> None:
        try:
            self._engine.generate(request, put, cancel, cold, (now_ns() - submitted_ns) / 1e6)
        except RequestFailedError as e:
            put(e)
        except Exception as e:
            logger.exception("generation failed", request_id=request.request_id)
            put(
                RequestFailedError(
                    "invalid_response", f"in-process generation failed: {e.__class__.__name__}: {e}"
                )
            )
