"""Recorded traces: read ours (JSONL), import Azure's CSV and Mooncake's JSONL, and build their prompts.

Our trace format, one JSON object per line::

    {"timestamp": 0.0, "prompt_tokens": 374, "output_tokens": 44, "session_id": "s1"}
    {"timestamp": 4.31, "prompt": "Summarise ...", "output_tokens": 109}

``timestamp`` is in seconds (any origin, non-decreasing); each line has ``prompt`` text or a
``prompt_tokens`` length. Optional ``hash_ids`` (Mooncake) name 512-token blocks shared between
requests, so prompts built from them share prefixes as the recorded ones did.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent.core.errors import ConfigError
from agent.core.record import GenerationRequest
from agent.core.scenario import Scenario

__all__ = [
    "HASH_BLOCK_TOKENS",
    "MAX_TRACE_SPAN_S",
    "PromptSynth",
    "TokenCodec",
    "TraceRequest",
    "load_trace",
    "trace_requests",
    "write_trace",
]

#: Longest trace accepted, first request to last: a week. Past it a timestamp is an absolute time or a
#: unit slip (milliseconds read as seconds), and a replay would wait for it for ever.
MAX_TRACE_SPAN_S = 7 * 24 * 3600.0
#: Mooncake traces hash prompts in blocks of this many tokens.
HASH_BLOCK_TOKENS = 512
TraceFormat = Literal["auto", "jsonl", "azure", "mooncake"]


class TraceRequest(BaseModel):
    """One recorded request."""

    model_config = ConfigDict(extra="forbid")

    timestamp: float = Field(ge=0, allow_inf_nan=False)
    prompt: str | None = Field(None, min_length=1)
    prompt_tokens: int | None = Field(None, ge=1)
    output_tokens: int = Field(ge=1)
    session_id: str | None = None
    hash_ids: list[int] | None = None

    @model_validator(mode="after")
    def _has_prompt(self) -> TraceRequest:
        if self.prompt is None and self.prompt_tokens is None:
            raise ValueError("each request needs prompt text or prompt_tokens")
        return self


@runtime_checkable
class TokenCodec(Protocol):
    """A backend's tokenizer, used to build prompts of exact token lengths."""

    async def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens added)."""

    async def detokenize(self, ids: list[int]) -> str:
        """Text of ``ids``."""


def _fail(path: Path, line: int, problem: str) -> ConfigError:
    return ConfigError(problem, location=f"{path}:{line}")


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise _fail(path, n, f"not JSON: {e}") from e
            if not isinstance(obj, dict):
                raise _fail(path, n, "each line must be a JSON object")
            yield n, obj


def _validated(path: Path, n: int, raw: dict[str, Any]) -> TraceRequest:
    try:
        return TraceRequest.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(map(str, err["loc"])) or "(line)"
        raise _fail(path, n, f"field '{field}': {err['msg']}") from e


def _azure_time(value: str) -> float:
    """``2023-11-16 18:15:46.6805900`` (seven fractional digits) → POSIX seconds."""
    whole, _, frac = value.strip().partition(".")
    base = datetime.strptime(whole, "%Y-%m-%d %H:%M:%S").timestamp()
    return base + (float(f"0.{frac}") if frac else 0.0)


def _read_azure(path: Path) -> list[TraceRequest]:
    out: list[TraceRequest] = []
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        need = {"TIMESTAMP", "ContextTokens", "GeneratedTokens"}
        if not reader.fieldnames or not need <= set(reader.fieldnames):
            raise _fail(path, 1, f"an Azure trace needs the columns {', '.join(sorted(need))}")
        first: float | None = None
        for n, row in enumerate(reader, start=2):
            try:
                t = _azure_time(row["TIMESTAMP"])
                prompt, output = int(row["ContextTokens"]), int(row["GeneratedTokens"])
            except (ValueError, TypeError) as e:
                raise _fail(path, n, f"unreadable row: {e}") from e
            if prompt < 0 or output < 0:
                raise _fail(
                    path,
                    n,
                    f"token counts cannot be negative (ContextTokens {prompt}, GeneratedTokens {output})",
                )
            first = t if first is None else first
            raw = {"timestamp": t - first, "prompt_tokens": max(prompt, 1), "output_tokens": max(output, 1)}
            out.append(_validated(path, n, raw))
    return out


def _read_mooncake(path: Path) -> list[TraceRequest]:
    out: list[TraceRequest] = []
    for n, obj in _read_jsonl(path):
        try:
            prompt, output = int(obj["input_length"]), int(obj["output_length"])
            raw = {
                "timestamp": float(obj["timestamp"]) / 1000.0,
                "prompt_tokens": max(prompt, 1),
                "output_tokens": max(output, 1),
                "hash_ids": obj.get("hash_ids"),
            }
        except (KeyError, ValueError, TypeError, OverflowError) as e:
            raise _fail(path, n, f"a Mooncake line needs timestamp, input_length, output_length: {e}") from e
        if prompt < 0 or output < 0:
            raise _fail(
                path, n, f"token counts cannot be negative (input_length {prompt}, output_length {output})"
            )
        out.append(_validated(path, n, raw))
    return out


def _detect(path: Path) -> TraceFormat:
    if path.suffix.lower() == ".csv":
        return "azure"
    for _, obj in _read_jsonl(path):
        return "mooncake" if "input_length" in obj else "jsonl"
    raise ConfigError("the trace is empty", location=str(path))


def load_trace(path: Path, fmt: TraceFormat = "auto", limit: int | None = None) -> list[TraceRequest]:
    """Read a trace in any known format; errors name the file and line; timestamps must not go back."""
    if not path.is_file():
        raise ConfigError(f"trace file {path} does not exist")
    kind = _detect(path) if fmt == "auto" else fmt
    if kind == "azure":
        items = _read_azure(path)
    elif kind == "mooncake":
        items = _read_mooncake(path)
    else:
        items = [_validated(path, n, obj) for n, obj in _read_jsonl(path)]
    if not items:
        raise ConfigError("the trace has no requests", location=str(path))
    for i in range(1, len(items)):
        if items[i].timestamp < items[i - 1].timestamp:
            raise ConfigError(
                f"request {i + 1} goes back in time; sort the trace by timestamp", location=str(path)
            )
        if (span := items[i].timestamp - items[0].timestamp) > MAX_TRACE_SPAN_S:
            raise ConfigError(
                f"request {i + 1} comes {span:.3g} s after the first, past "
                f"the {MAX_TRACE_SPAN_S / 86400:.0f}-day horizon; timestamps are seconds from the trace's "
                "start (Mooncake's are milliseconds)",
                location=str(path),
            )
    return items[:limit] if limit else items


def write_trace(items: Sequence[TraceRequest], path: Path) -> None:
    """Write our JSONL trace format (omitting empty fields)."""
    with path.open("w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item.model_dump(exclude_none=True)) + "\n")


class PromptSynth:
    """Prompts of a requested token length cut from a corpus with the backend's own tokenizer.

    Without a tokenizer, lengths are estimated at ``chars_per_token`` and the records' server counts show
    the truth. Each request starts at a different corpus offset so no two share a cached prefix, unless
    the trace's ``hash_ids`` say they should.
    """

    def __init__(self, corpus: str, codec: TokenCodec | None = None, chars_per_token: float = 4.0) -> None:
        if not corpus.strip():
            raise ValueError("the corpus is empty")
        self.corpus = corpus
        self.codec = codec
        self.chars_per_token = chars_per_token
        self._ids: list[int] = []

    @property
    def exact(self) -> bool:
        """True when lengths come from the backend's tokenizer."""
        return bool(self._ids)

    async def prepare(self) -> None:
        """Tokenise the corpus once."""
        if self.codec is not None:
            self._ids = await self.codec.tokenize(self.corpus)

    @staticmethod
    def _cycle(seq: Sequence[Any], start: int, n: int) -> list[Any]:
        size = len(seq)
        return [seq[(start + i) % size] for i in range(n)]

    async def build(self, n: int, variant: int, hash_ids: Sequence[int] | None = None) -> str:
        """Text of about ``n`` tokens (exactly, up to merges at the cut, when a tokenizer is present)."""
        if not self._ids:
            chars = max(1, round(n * self.chars_per_token))
            return "".join(self._cycle(self.corpus, variant * 7919, chars))
        assert self.codec is not None
        if hash_ids:
            ids: list[int] = []
            for h in hash_ids:
                ids += self._cycle(self._ids, h * HASH_BLOCK_TOKENS * 31 + h, HASH_BLOCK_TOKENS)
                if len(ids) >= n:
                    break
            ids = (ids + self._cycle(self._ids, variant * 7919, max(0, n - len(ids))))[:n]
        else:
            ids = self._cycle(self._ids, variant * 7919, n)
        return await self.codec.detokenize(ids)


async def trace_requests(
    items: Sequence[TraceRequest], scenario: Scenario, synth: PromptSynth
) -> list[GenerationRequest]:
    """Requests for every trace line, prompts built before the clock starts (never on the hot path)."""
    template = next(scenario.requests_iter())
    out: list[GenerationRequest] = []
    for i, item in enumerate(items):
        text = item.prompt
        if text is None:
            assert item.prompt_tokens is not None  # the model validator requires one of them
            text = await synth.build(item.prompt_tokens, i, item.hash_ids)
        messages = None
        if scenario.endpoint == "chat":
            messages = [{"role": "user", "content": text}]
            if scenario.system:
                messages.insert(0, {"role": "system", "content": scenario.system})
        out.append(
            dataclasses.replace(
                template,
                request_id=f"trace-{i:06d}",
                prompt=text if scenario.endpoint == "completions" else None,
                messages=messages,
                max_tokens=item.output_tokens,
                prompt_id=f"trace-{i:06d}",
                prompt_tokens_target=item.prompt_tokens,
                session_id=item.session_id,
            )
        )
    return out
