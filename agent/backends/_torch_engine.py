"""The torch side of the ``transformers`` backend, imported on its worker thread once torch is known."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import structlog
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from agent.backends.builtin_model import GEMMA_CHAT_TEMPLATE, ensure_builtin_model
from agent.backends.capabilities import BatchPrefill, WarmPass
from agent.backends.inprocess import (
    BUILTIN_MODEL,
    TransformersArgs,
    chunk,
    end_event,
    error_for_missing,
    native,
    now_ns,
)
from agent.backends.modelfacts import gguf_facts
from agent.core.errors import BackendError, RequestFailedError
from agent.core.record import GenerationRequest, SamplingParams, StreamEvent

__all__ = ["Engine"]

logger = structlog.get_logger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "auto": "auto"}


def _locate(args: TransformersArgs) -> tuple[str, dict[str, Any]]:
    """Where to load from: (directory or HF id, extra from_pretrained kwargs)."""
    if args.model == BUILTIN_MODEL:
        path = ensure_builtin_model(args.cache_dir)
        return str(path.parent), {"gguf_file": path.name}
    path = Path(args.model)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise BackendError(f"GGUF file {path} does not exist")
        return str(path.parent), {"gguf_file": path.name}
    return args.model, {}


class Engine:
    """A loaded model and tokenizer plus the instrumented generation loop."""

    def __init__(
        self, args: TransformersArgs, tokenizer: Any, model: Any, device: torch.device, load_ms: float
    ):
        self.args = args
        self.tok = tokenizer
        self.model = model
        self.device = device
        self.load_ms = load_ms
        self.prefill_fn: Any = model
        self.decode_fn: Any = model
        self.compile: dict[str, object] = {"mode": args.compile}
        #: dynamo's count of compiled frames when the warm pass ended: later ones happened under the clock
        self._frames_warm: int | None = None
        if args.compile:
            self._setup_compile()

    @classmethod
    def load(cls, args: TransformersArgs) -> Engine:
        """Load tokenizer and weights; errors say how to get the model offline."""
        t0 = now_ns()
        if args.threads:
            torch.set_num_threads(args.threads)
        device = torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
        )
        source, extra = _locate(args)
        try:
            tok = AutoTokenizer.from_pretrained(
                args.tokenizer or source, local_files_only=args.local_files_only, **extra
            )
            model: Any = AutoModelForCausalLM.from_pretrained(
                source, dtype=_DTYPES[args.dtype], local_files_only=args.local_files_only, **extra
            )
        except (OSError, ValueError) as e:
            raise error_for_missing(args.model, e) from e
        model.to(device).eval()
        if args.model == BUILTIN_MODEL and not getattr(tok, "chat_template", None):
            tok.chat_template = GEMMA_CHAT_TEMPLATE  # the prompt llama.cpp builds for the same file
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        _sync(device)
        return cls(args, tok, model, device, (now_ns() - t0) / 1e6)

    # ---- compile evidence -------------------------------------------------------------------------
    def _setup_compile(self) -> None:
        self.compile.update(backend_requested=self.args.compile_backend, backend_actual=None, error=None)
        from torch._dynamo import list_backends
        from torch._dynamo.exc import InvalidBackend

        try:
            compiled = torch.compile(self.model, backend=self.args.compile_backend)
        except InvalidBackend as e:
            known = ", ".join(sorted(list_backends(exclude_tags=())))
            raise BackendError(
                f"unknown torch.compile backend {self.args.compile_backend!r}; one of: {known}"
            ) from e
        self.prefill_fn = compiled
        if self.args.compile == "all":
            self.decode_fn = compiled

    def _call(self, fn: Any, **kw: Any) -> Any:
        """Run ``fn``; if compilation fails, record it and fall back to eager for good."""
        if fn is self.model:
            return fn(**kw)
        try:
            out = fn(**kw)
        except Exception as e:  # noqa: BLE001 - dynamo/inductor raise many types; all mean "not compiled"
            logger.warning("torch.compile failed; running eager", error=f"{e.__class__.__name__}: {e}")
            self.compile.update(backend_actual="eager", error=f"{e.__class__.__name__}: {str(e)[:300]}")
            self.prefill_fn = self.decode_fn = self.model
            return self.model(**kw)
        if self.compile.get("backend_actual") is None:
            self.compile["backend_actual"] = self.args.compile_backend
        return out

    def compile_evidence(self) -> dict[str, object]:
        """Requested vs actual backend and dynamo's counters (unique graphs, recompiles, guard failures).

        After a warm pass, ``compiles_measured`` counts the frames compiled while the clock ran (zero when
        every shape the run met was compiled before it).
        """
        if not self.args.compile:
            return {"mode": None}
        counts = _dynamo_counts()
        out = {**self.compile, **counts}
        if self._frames_warm is not None:
            out["compiles_measured"] = counts["frames_compiled"] - self._frames_warm
        return out

    def warm(self, requests: Sequence[GenerationRequest], batches: Sequence[list[str]]) -> WarmPass | None:
        """Compile and run every shape the run will meet before its clock starts (only with ``compile``).

        Each distinct prompt shape gets a prefill and one decode step; the longest prompt then decodes
        the largest output length once, which covers every KV-cache length the run can reach; each batch
        shape gets its batched prefill. The figures go to the manifest apart from every request's timings.
        """
        if not self.args.compile or not (requests or batches):
            return None
        before = _dynamo_counts()
        seconds = _compile_seconds()
        t0 = now_ns()
        shapes: dict[int, GenerationRequest] = {}
        for request in requests:
            shape = int(self._prefill_inputs(self.encode(request))["input_ids"].shape[1])
            if shape not in shapes:
                shapes[shape] = request
                self._quiet(dataclasses.replace(request, max_tokens=min(2, request.max_tokens)))
        if shapes:
            longest = shapes[max(shapes)]
            self._quiet(
                dataclasses.replace(longest, max_tokens=max(r.max_tokens for r in requests), ignore_eos=True)
            )
        batch_shapes = set()
        for prompts in batches:
            result = self.prefill_batch(prompts)
            batch_shapes.add((result.prompts, result.padded_len))
        after = _dynamo_counts()
        self._frames_warm = after["frames_compiled"]
        warm = WarmPass(
            ms=(now_ns() - t0) / 1e6,
            compile_s=_compile_seconds() - seconds,
            prompt_shapes=len(shapes),
            batch_shapes=len(batch_shapes),
            frames_compiled=after["frames_compiled"] - before["frames_compiled"],
            graphs=after["unique_graphs"] - before["unique_graphs"],
            recompiles=after["recompiles"] - before["recompiles"],
            graph_breaks=after["graph_breaks"] - before["graph_breaks"],
        )
        self.compile["warm"] = warm.to_dict()
        return warm

    def _quiet(self, request: GenerationRequest) -> None:
        """One generation whose tokens go nowhere (the warm pass)."""
        self.generate(request, lambda _: None, threading.Event(), cold=False)

    def describe(self) -> dict[str, object]:
        """Manifest facts."""
        return {
            "model": self.args.model,
            "model_class": type(self.model).__name__,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "dtype": str(next(self.model.parameters()).dtype).removeprefix("torch."),
            "device": str(self.device),
            "threads": torch.get_num_threads(),
            "load_ms": self.load_ms,
            "torch": torch.__version__,
            "compile": self.compile_evidence(),
            "model_facts": self._facts(),
        }

    def _facts(self) -> dict[str, object]:
        """The GGUF file's facts when loaded from one; the dtype is what the weights were turned into."""
        where, extra = _locate(self.args)
        if "gguf_file" not in extra:
            return {"format": "transformers"}
        return gguf_facts(Path(where) / extra["gguf_file"])

    # ---- generation -------------------------------------------------------------------------------
    def encode(self, request: GenerationRequest) -> torch.Tensor:
        """Prompt ids for a request: chat template for chat messages when the tokenizer has one."""
        if request.messages and self.args.chat_template and getattr(self.tok, "chat_template", None):
            ids = self.tok.apply_chat_template(
                request.messages, add_generation_prompt=True, return_tensors="pt"
            )
            if not isinstance(ids, torch.Tensor):  # newer tokenizers return a BatchEncoding
                ids = ids["input_ids"]
        else:
            text = request.prompt if request.prompt is not None else _flatten(request.messages)
            ids = self.tok(text, return_tensors="pt").input_ids
        out: torch.Tensor = ids.to(self.device)
        return out

    def _pick(
        self, logits: torch.Tensor, sampling: SamplingParams, gen: torch.Generator | None
    ) -> torch.Tensor:
        temperature = sampling.get("temperature")
        if not isinstance(temperature, int | float) or not temperature:
            return logits.argmax(dim=-1)
        logits = logits / float(temperature)
        top_k = sampling.get("top_k")
        if isinstance(top_k, int) and top_k:
            kth = torch.topk(logits, top_k).values[..., -1, None]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits.float(), dim=-1)
        return torch.multinomial(probs, 1, generator=gen).squeeze(-1)

    def generate(
        self,
        request: GenerationRequest,
        put: Callable[[StreamEvent | BaseException], None],
        cancel: threading.Event,
        cold: bool,
        queued_ms: float | None = None,
    ) -> None:
        """Prefill, then the decode loop; every token is put as a Chunk stamped when it was chosen.

        ``cancel`` (set when the caller gave up, on a timeout say) is checked before the prefill and
        before every decode step, so abandoned work stops within one step and never delays the next
        request. ``queued_ms`` is how long the request waited for this worker.
        """
        if cancel.is_set():
            return
        ids = self.encode(request)
        prompt_n = int(ids.shape[1])
        if request.max_tokens < 1:
            raise RequestFailedError("invalid_response", "max_tokens must be at least 1")
        seed = request.sampling.get("seed")
        gen = torch.Generator(device=self.device).manual_seed(seed) if isinstance(seed, int) else None
        eos = None if request.ignore_eos else self.tok.eos_token_id
        kw = self._prefill_inputs(ids)
        dec = _Decoder(self.tok)
        with torch.inference_mode():
            _sync(self.device)
            t0 = now_ns()
            out = self._call(self.prefill_fn, **kw, use_cache=True)
            token = self._pick(out.logits[:, -1, :], request.sampling, gen)
            _sync(self.device)
            t_first = now_ns()
            put(chunk(t_first, dec.push(int(token))))
            steps = _Steps(token, out.past_key_values, kw.get("attention_mask"), t_first)
            if not self._decode(steps, request, gen, dec, put, cancel, eos):
                return
        n, t_last, finish = steps.n, steps.t_last, steps.finish
        actual = self.compile.get("backend_actual")
        compiled = actual if self.args.compile and isinstance(actual, str) else None
        load = self.load_ms if cold else None
        timings = native(
            (t_first - t0) / 1e6, (t_last - t_first) / 1e6, prompt_n, n, load, compiled, queue_ms=queued_ms
        )
        put(end_event(now_ns(), timings, finish))

    def _decode(
        self,
        s: _Steps,
        request: GenerationRequest,
        gen: torch.Generator | None,
        dec: _Decoder,
        put: Callable[[StreamEvent | BaseException], None],
        cancel: threading.Event,
        eos: int | None,
    ) -> bool:
        """The decode loop after the first token, each token put as it is chosen; False when cancelled."""
        while s.n < request.max_tokens:
            if eos is not None and int(s.token) == eos:
                s.finish = "stop"
                return True
            if cancel.is_set():
                return False
            step: dict[str, Any] = {  # the model's forward arguments: tensors, its cache, flags
                "input_ids": s.token[:, None],
                "past_key_values": s.past,
                "use_cache": True,
            }
            if s.mask is not None:
                s.mask = torch.cat([s.mask, s.mask.new_ones((1, 1))], dim=1)
                step.update(attention_mask=s.mask, position_ids=(s.mask.sum(-1, keepdim=True) - 1))
            out = self._call(self.decode_fn, **step)
            s.token = self._pick(out.logits[:, -1, :], request.sampling, gen)
            _sync(self.device)
            s.t_last = now_ns()
            put(chunk(s.t_last, dec.push(int(s.token))))
            s.past, s.n = out.past_key_values, s.n + 1
        if eos is not None and int(s.token) == eos:
            s.finish = "stop"
        return True

    def _prefill_inputs(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Input ids, left-padded to a shape bucket when asked (with the mask and positions that implies)."""
        m = self.args.pad_to_multiple
        if not m or ids.shape[1] % m == 0:
            return {"input_ids": ids}
        pad = m - ids.shape[1] % m
        pads = torch.full((1, pad), self.tok.pad_token_id, dtype=ids.dtype, device=ids.device)
        mask = torch.cat([torch.zeros_like(pads), torch.ones_like(ids)], dim=1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return {"input_ids": torch.cat([pads, ids], dim=1), "attention_mask": mask, "position_ids": positions}

    def prefill_batch(self, prompts: list[str]) -> BatchPrefill:
        """One left-padded forward pass over all prompts, device synchronised around it."""
        if not prompts:
            raise BackendError("prefill_batch needs at least one prompt")
        self.tok.padding_side = "left"
        enc = self.tok(prompts, return_tensors="pt", padding=True).to(self.device)
        positions = (enc.attention_mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            _sync(self.device)
            t0 = now_ns()
            self._call(self.prefill_fn, **enc, position_ids=positions, use_cache=False)
            _sync(self.device)
            elapsed = (now_ns() - t0) / 1e6
        return BatchPrefill(len(prompts), int(enc.input_ids.shape[1]), int(enc.attention_mask.sum()), elapsed)


class _Decoder:
    """Incremental detokenisation: each token's text is the growth of the decoded sequence."""

    def __init__(self, tok: Any) -> None:
        self.tok = tok
        self.ids: list[int] = []
        self.text = ""

    def push(self, token: int) -> str:
        self.ids.append(token)
        text: str = self.tok.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # half a character: wait for the rest
            return ""
        delta, self.text = text[len(self.text) :], text
        return delta


def _dynamo_counts() -> dict[str, int]:
    """Dynamo's process-wide counters that say whether compilation did what was asked.

    ``frames_compiled`` counts every compilation of a frame, first ones and recompiles alike (some torch
    versions leave the ``recompiles`` counter at zero while they recompile).
    """
    from torch._dynamo.utils import counters

    stats: dict[str, int] = dict(counters.get("stats", {}))
    frames: dict[str, int] = dict(counters.get("frames", {}))
    return {
        "frames_compiled": int(frames.get("total", 0)),
        "unique_graphs": int(stats.get("unique_graphs", 0)),
        "calls_captured": int(stats.get("calls_captured", 0)),
        "recompiles": int(sum(counters.get("recompiles", {}).values())),
        "guard_failures": int(sum(counters.get("guard_failures", {}).values())),
        "graph_breaks": int(sum(counters.get("graph_break", {}).values())),
    }


def _compile_seconds() -> float:
    """Seconds dynamo has spent compiling frames in this process (its own timer)."""
    from torch._dynamo.utils import compilation_time_metrics

    return float(sum(compilation_time_metrics.get("_compile.compile_inner", [])))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _flatten(messages: list[dict[str, str]] | None) -> str:
    return "\n\n".join(m.get("content", "") for m in messages or [])


@dataclasses.dataclass(slots=True)
class _Steps:
    """The decode loop's state: last token, cache, mask, tokens so far, when the last came, why it ended."""

    token: torch.Tensor
    past: Any
    mask: torch.Tensor | None
    t_last: int
    n: int = 1
    finish: str = "length"
