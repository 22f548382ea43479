"""Any OpenAI-compatible server: ``/v1/chat/completions`` and ``/v1/completions`` streamed over SSE.

One pooled ``aiohttp`` session per backend. Native timings are read from llama.cpp's ``timings`` object
(milliseconds: ``prompt_ms`` → prefill, ``predicted_ms`` → decode) when the server sends it.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
import structlog
from pydantic import Field, SecretStr, model_validator

from agent.backends.base import CliContext, HttpBackendArgs, register
from agent.backends.capabilities import CacheReset
from agent.core.errors import BackendError, RequestFailedError
from agent.core.record import (
    LOGPROB_POSITIONS,
    Chunk,
    GenerationRequest,
    NativeTimings,
    StreamEnd,
    StreamEvent,
    Usage,
)
from agent.core.text import clean
from agent.transport.framing import MAX_EVENT_BYTES, Held
from agent.transport.http import failure_from, open_session, post_once_more_if_stale, read_error_body
from agent.transport.probe import ArrivalProbe
from agent.transport.socket_clock import PushedBody, clock
from agent.transport.sse import SSEEvent, SSEParser

__all__ = ["OpenAIArgs", "OpenAIBackend", "parse_payload"]

logger = structlog.get_logger(__name__)

#: Longest model id taken from a server's ``/v1/models`` (ids are names, never pages of text).
MAX_MODEL_ID = 256

_PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}


class OpenAIArgs(HttpBackendArgs):
    """Arguments of the ``openai`` backend."""

    base_url: str = "http://127.0.0.1:8000"
    model: str | None = Field(None, description="model id; None asks the server's /v1/models")
    api_key: SecretStr | None = None
    endpoint: Literal["chat", "completions"] | None = Field(
        None, description="force one endpoint; None follows each request's endpoint"
    )
    engine_fields: bool = Field(True, description="send llama.cpp/vLLM extensions ignore_eos, cache_prompt")
    label: str = Field("openai", description="the backend name written into records")
    request_metrics: bool = Field(
        False,
        description="ask vLLM for its per-request `metrics` object (`include_metrics`; the server needs "
        "--enable-per-request-metrics)",
    )
    keep_alive: bool = Field(
        True, description="reuse connections; llama.cpp's server closes them after every stream anyway"
    )

    @model_validator(mode="after")
    def _one_credential(self) -> OpenAIArgs:
        """A key and a URL password would both be the Authorization header: one has to go."""
        if self.api_key is not None and urlsplit(self.base_url).password is not None:
            raise ValueError(
                "base_url carries a user:password and an api_key is set too; a request can carry only "
                "one of them: drop the password from the URL or unset the key"
            )
        return self

    @classmethod
    def from_cli(cls, ctx: CliContext) -> dict[str, object]:
        """``--base-url`` / ``--model``, else the ``INFERMETER__OPENAI__*`` settings; the key from them."""
        args = {
            **super().from_cli(ctx),
            "base_url": ctx.base_url or ctx.openai_base_url,
            "model": ctx.model or ctx.openai_model,
            "api_key": ctx.openai_api_key,
        }
        return {k: v for k, v in args.items() if v is not None}


@dataclass(slots=True)
class _StreamState:
    done: bool = False
    finish_reason: str | None = None
    usage: Usage | None = None
    native: NativeTimings | None = None
    logprobs: list[dict[str, float]] | None = None

    def end(self, t_ns: int) -> StreamEnd:
        """The stream's end event at ``t_ns``, carrying what the stream reported."""
        return StreamEnd(
            t_ns,
            usage=self.usage,
            native=self.native,
            finish_reason=self.finish_reason,
            logprobs=self.logprobs or None,
        )


def _logprobs(obj: Any, state: _StreamState) -> None:
    """Keep the top-k alternatives of the first output positions (chat and completions formats)."""
    room = LOGPROB_POSITIONS - len(state.logprobs) if state.logprobs is not None else 0
    if room <= 0 or not isinstance(obj, dict):
        return
    entries = obj.get("content")
    if isinstance(entries, list):  # OpenAI chat format, also llama.cpp's completions
        tops = [e.get("top_logprobs") for e in entries if isinstance(e, dict)]
        maps = [
            {a["token"]: float(a["logprob"]) for a in top if isinstance(a, dict) and "token" in a}
            for top in tops
            if isinstance(top, list)
        ]
    elif isinstance(obj.get("top_logprobs"), list):  # legacy completions: one {token: logprob} per token
        maps = [{str(k): float(v) for k, v in m.items()} for m in obj["top_logprobs"] if isinstance(m, dict)]
    else:
        return
    assert state.logprobs is not None  # room > 0
    state.logprobs.extend(maps[:room])


def _usage(obj: dict[str, object]) -> Usage:
    details = obj.get("prompt_tokens_details") or {}
    return Usage(
        prompt_tokens=_count(obj.get("prompt_tokens")),
        output_tokens=_count(obj.get("completion_tokens")),
        source="server",
        cached_prompt_tokens=_count(details.get("cached_tokens")) if isinstance(details, dict) else None,
    )


def _timings(obj: dict[str, object]) -> NativeTimings:
    return NativeTimings(
        source="llamacpp_timings",
        prefill_ms=_num(obj.get("prompt_ms")),
        decode_ms=_num(obj.get("predicted_ms")),
        prompt_n=_count(obj.get("prompt_n")),
        predicted_n=_count(obj.get("predicted_n")),
    )


def _count(v: Any) -> int | None:
    """A token count as the server sent it, or None for anything that is not a whole number."""
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _vllm_metrics(obj: dict[str, object]) -> NativeTimings:
    """Read vLLM's per-request ``metrics``: queue time and server-side TTFT (no prefill/decode split)."""
    return NativeTimings(
        source="vllm_metrics",
        queue_ms=_num(obj.get("queue_time_ms")),
        server_ttft_ms=_num(obj.get("time_to_first_token_ms")),
    )


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def parse_payload(data: str, t_ns: int, state: _StreamState) -> list[Chunk]:
    """Interpret one SSE data payload; update ``state``; return its text-bearing chunks."""
    if data == "[DONE]":
        state.done = True
        return []
    try:
        obj = json.loads(data)
    except ValueError as e:
        raise RequestFailedError("invalid_response", f"malformed JSON in stream: {data[:120]!r}") from e
    if not isinstance(obj, dict):
        raise RequestFailedError("invalid_response", f"stream payload is not an object: {data[:120]!r}")
    if "error" in obj:
        raise RequestFailedError("invalid_response", f"server error in stream: {str(obj['error'])[:200]}")
    if isinstance(obj.get("usage"), dict):
        state.usage = _usage(obj["usage"])
    if isinstance(obj.get("timings"), dict):
        state.native = _timings(obj["timings"])
    elif isinstance(obj.get("metrics"), dict) and state.native is None:
        state.native = _vllm_metrics(obj["metrics"])
    choices = obj.get("choices")
    if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
        return []
    choice = choices[0]
    if choice.get("finish_reason"):
        state.finish_reason = choice["finish_reason"]
    if state.logprobs is not None and choice.get("logprobs"):
        _logprobs(choice["logprobs"], state)
    delta = choice.get("delta")
    out: list[Chunk] = []
    if isinstance(delta, dict):
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if reasoning:
            out.append(Chunk(t_ns, reasoning, reasoning=True))
        text = delta.get("content")
    else:
        text = choice.get("text")
    if text:
        out.append(Chunk(t_ns, text))
    return out


_SLOW_KEYS = (b'"usage"', b'"timings"', b'"metrics"', b'"error"')
_ANSWER_KEYS = (b'"content":"', b'"text":"')
_REASONING_KEYS = (b'"reasoning_content":"', b'"reasoning":"')


def _string_at(payload: bytes, keys: tuple[bytes, ...]) -> str | None:
    """The value of the first key present if it has no escapes ("" when absent); None when unsure.

    A JSON string value holds no unescaped quote, so without a backslash the next quote ends it.
    """
    for key in keys:
        start = payload.find(key)
        if start < 0:
            continue
        start += len(key)
        end = payload.find(b'"', start)
        if end < 0 or b"\\" in payload[start:end]:
            return None
        return payload[start:end].decode("utf-8", errors="replace")
    return ""


def fast_payload(payload: bytes) -> tuple[str, str] | None:
    """(answer text, reasoning text) of an ordinary mid-stream chunk without a JSON parse.

    None whenever the chunk may carry anything else (usage, timings, metrics, an error, a finish
    reason) or a value with escapes: those go through ``parse_payload``. Key patterns cannot match
    inside string values, where every quote is escaped.
    """
    if payload[:1] != b"{" or b'"finish_reason":null' not in payload:
        return None
    for key in _SLOW_KEYS:
        if key in payload:
            return None
    answer = _string_at(payload, _ANSWER_KEYS)
    reasoning = _string_at(payload, _REASONING_KEYS)
    if answer is None or reasoning is None:
        return None
    return answer, reasoning


def model_label(model_id: str) -> str:
    """A short label for a discovered model id.

    llama.cpp's server names its model by the GGUF's path: the label is the file's stem. Hub ids such as
    ``org/name`` (vLLM) are kept whole.
    """
    name = model_id.rstrip("/").rsplit("/", 1)[-1]
    if name.lower().endswith(".gguf"):
        return name[: -len(".gguf")]
    return name if model_id.startswith("/") else model_id


@register("openai", OpenAIArgs)
class OpenAIBackend:
    """Streams from an OpenAI-compatible HTTP server through one shared connection pool."""

    def __init__(self, args: OpenAIArgs, *, arrivals: ArrivalProbe | None = None) -> None:
        self.args = args
        #: the probe this backend's connections report to (one a wrapping backend shares, or its own)
        self.arrivals = arrivals or ArrivalProbe()
        self.name = args.label
        self.model = args.model or ""
        #: what requests name as their model: the server's own id (the label may be shorter)
        self._request_model = self.model
        self._base = args.base_url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None
        self._server_header: str | None = None
        #: tokens one request may hold, where the server says (vLLM's ``max_model_len`` in /v1/models)
        self.context_tokens: int | None = None
        #: the prefix-cache reset that worked last
        self._reset_way: str | None = None

    async def start(self) -> None:
        """Open the pooled session and, when no model was given, ask the server for one."""
        if self._session is not None:
            return
        headers = {"Content-Type": "application/json"}
        if self.args.api_key is not None:
            headers["Authorization"] = f"Bearer {self.args.api_key.get_secret_value()}"
        self._session = open_session(
            headers,
            probe=self.arrivals,
            max_connections=self.args.max_connections,
            connect_timeout_s=self.args.connect_timeout_s,
            keep_alive=self.args.keep_alive,
        )
        if not self.model:
            self._request_model = await self._discover_model()
            self.model = model_label(self._request_model)

    async def _discover_model(self) -> str:
        assert self._session is not None
        url = f"{self._base}/v1/models"
        try:
            async with self._session.get(url) as resp:
                self._server_header = resp.headers.get("Server")
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            raise BackendError(
                f"could not list models at {url} ({e.__class__.__name__}: {e}); "
                "check --base-url or pass --model"
            ) from e
        data = body.get("data") if isinstance(body, dict) else None
        if not data or not isinstance(data, list) or "id" not in data[0]:
            raise BackendError(f"{url} returned no models; pass --model explicitly")
        self.context_tokens = _count(data[0].get("max_model_len"))
        return clean(str(data[0]["id"]))[:MAX_MODEL_ID]

    async def close(self) -> None:
        """Close the session; safe to call twice."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def describe(self) -> dict[str, object]:
        """Manifest facts: never the API key."""
        return {
            "backend": self.name,
            "base_url": self._base,
            "model": self.model,
            "model_id": self._request_model,
            "endpoint": self.args.endpoint or "per request",
            "server": self._server_header,
            **clock(),
        }

    @property
    def metrics_url(self) -> str:
        """Where the server's own Prometheus series would be (vLLM, SGLang, TGI, llama.cpp ``--metrics``)."""
        return self._base + "/metrics"

    async def reset_prefix_cache(self) -> CacheReset:
        """Empty the server's prefix cache, the way its engine offers; what was done, for the manifest.

        vLLM: ``POST /reset_prefix_cache`` (the server runs with ``VLLM_SERVER_DEV_MODE=1``); SGLang:
        ``POST /flush_cache``; llama.cpp: erase every slot (``POST /slots/{id}?action=erase``, the
        server started with ``--slot-save-path``). The way that worked is tried first next time.
        """
        if self._session is None:
            raise RuntimeError("backend not started: call start() first")
        ways = [self._reset_vllm, self._reset_sglang, self._reset_llamacpp]
        if self._reset_way is not None:
            ways.sort(key=lambda w: w.__name__ != self._reset_way)
        tried: list[str] = []
        for way in ways:
            try:
                done = await way()
            except (aiohttp.ClientError, TimeoutError, ValueError) as e:
                tried.append(f"{way.__name__.removeprefix('_reset_')}: {e.__class__.__name__}")
                continue
            if isinstance(done, str):
                self._reset_way = way.__name__
                return CacheReset(ok=True, how=done)
            tried.append(done[1])
        return CacheReset(ok=False, how=None, why="no way to reset the prefix cache: " + "; ".join(tried))

    async def _answer(self, method: str, path: str) -> tuple[int, Any]:
        assert self._session is not None
        async with self._session.request(method, self._base + path) as resp:
            body = await resp.read()
            try:
                return resp.status, json.loads(body) if body else None
            except ValueError:
                return resp.status, None

    async def _reset_vllm(self) -> str | tuple[bool, str]:
        status, _ = await self._answer("POST", "/reset_prefix_cache")
        if status < 300:
            return "vllm: POST /reset_prefix_cache"
        return False, f"POST /reset_prefix_cache answered {status} (vLLM needs VLLM_SERVER_DEV_MODE=1)"

    async def _reset_sglang(self) -> str | tuple[bool, str]:
        status, _ = await self._answer("POST", "/flush_cache")
        return (
            "sglang: POST /flush_cache" if status < 300 else (False, f"POST /flush_cache answered {status}")
        )

    async def _reset_llamacpp(self) -> str | tuple[bool, str]:
        status, slots = await self._answer("GET", "/slots")
        if status >= 300 or not isinstance(slots, list):
            return False, f"GET /slots answered {status}"
        ids = [s["id"] for s in slots if isinstance(s, dict) and isinstance(s.get("id"), int)]
        for i in ids:
            status, _ = await self._answer("POST", f"/slots/{i}?action=erase")
            if status >= 300:
                return (
                    False,
                    f"POST /slots/{i}?action=erase answered {status} (llama.cpp needs --slot-save-path)",
                )
        return f"llama.cpp: erased {len(ids)} slots"

    async def _post_json(self, path: str, body: dict[str, object]) -> dict[str, object]:
        if self._session is None:
            raise RuntimeError("backend not started: call start() first")
        url = self._base + path
        try:
            async with self._session.post(url, data=json.dumps(body).encode()) as resp:
                if resp.status >= 300:
                    raise BackendError(
                        f"{url} answered HTTP {resp.status}; the server has no tokenizer endpoint"
                    )
                out = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            raise BackendError(f"{url} failed ({e.__class__.__name__}: {e})") from e
        if not isinstance(out, dict):
            raise BackendError(f"{url} did not return a JSON object")
        return out

    async def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        """Token ids from the server's ``/tokenize`` (llama.cpp and vLLM both have one).

        ``special`` adds what the server adds to a raw prompt (a BOS token), as a completion request gets.
        """
        return [t for t, _ in await self._tokens(text, special=special)]

    async def _tokens(self, text: str, *, special: bool, pieces: bool = False) -> list[tuple[int, Any]]:
        body = {
            "content": text,
            "prompt": text,
            "model": self._request_model,
            "add_special": special,
            "add_special_tokens": special,
        }
        if pieces:
            body["with_pieces"] = True
        out = await self._post_json("/tokenize", body)
        tokens = out.get("tokens")
        if not isinstance(tokens, list):
            raise BackendError("/tokenize returned no token list")
        return [(int(t["id"]), t.get("piece")) if isinstance(t, dict) else (int(t), None) for t in tokens]

    async def token_pieces(self, text: str) -> list[tuple[int, str]] | None:
        """Each token's id and text, where the server gives them (llama.cpp), so text can be cut locally."""
        got = await self._tokens(text, special=False, pieces=True)
        if not got or not all(isinstance(p, str) for _, p in got):
            return None  # a piece that is not whole UTF-8 comes as bytes: cut on the server instead
        return [(t, str(p)) for t, p in got]

    async def count_prompt(
        self, *, text: str | None = None, messages: list[dict[str, str]] | None = None
    ) -> int | None:
        """Tokens the server counts for a prompt: the template and special tokens included; None if unknown.

        vLLM's ``/tokenize`` takes chat messages; llama.cpp applies its template at ``/apply-template``.
        """
        try:
            if messages is None:
                return len(await self.tokenize(text or "", special=True))
            with contextlib.suppress(BackendError):
                out = await self._post_json(
                    "/tokenize",
                    {"model": self._request_model, "messages": messages, "add_generation_prompt": True},
                )
                count = out.get("count")
                if isinstance(count, int):  # vLLM's answer (llama.cpp ignores messages)
                    return count
            prompt = await self.render_prompt(messages)
            return len(await self.tokenize(prompt, special=True)) if prompt is not None else None
        except BackendError:
            return None

    async def render_prompt(self, messages: list[dict[str, str]]) -> str | None:
        """The prompt text the chat template makes of ``messages`` (llama.cpp: ``/apply-template``)."""
        try:
            out = await self._post_json("/apply-template", {"messages": messages})
        except BackendError:
            return None
        prompt = out.get("prompt")
        return prompt if isinstance(prompt, str) else None

    async def detokenize(self, ids: list[int]) -> str:
        """Text from the server's ``/detokenize`` (``content`` from llama.cpp, ``prompt`` from vLLM)."""
        out = await self._post_json("/detokenize", {"tokens": ids, "model": self._request_model})
        text = out.get("content", out.get("prompt"))
        if not isinstance(text, str):
            raise BackendError("/detokenize returned no text")
        return text

    def _body(self, req: GenerationRequest, endpoint: str) -> dict[str, object]:
        model = req.model or self._request_model
        body: dict[str, object] = {"model": model, "max_tokens": req.max_tokens, "stream": req.stream}
        if req.stream:
            body["stream_options"] = {"include_usage": True}
        if endpoint == "chat":
            body["messages"] = req.messages or [{"role": "user", "content": req.prompt or ""}]
        else:
            body["prompt"] = req.prompt if req.prompt is not None else _flatten(req.messages)
        body.update(req.sampling)
        if self.args.request_metrics:
            body["include_metrics"] = True
        if req.top_logprobs:
            if endpoint == "chat":
                body.update(logprobs=True, top_logprobs=req.top_logprobs)
            else:
                body["logprobs"] = req.top_logprobs
        if self.args.engine_fields:
            body["cache_prompt"] = req.cache_prompt
            if req.ignore_eos:
                body["ignore_eos"] = True
                body["min_tokens"] = req.max_tokens  # vLLM: the length is enforced, not only capped
        if req.extra_body:
            body.update(req.extra_body)
        return body

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        """POST the request and yield chunks stamped per socket read, then one StreamEnd."""
        if self._session is None:
            raise RuntimeError("backend not started: call start() first")
        endpoint = self.args.endpoint or request.endpoint
        payload = json.dumps(self._body(request, endpoint)).encode()
        state = _StreamState(logprobs=[] if request.top_logprobs else None)
        # logprobs ride on ordinary events, so those streams take the full parser for every event
        reader = ChunkReader(
            state,
            text=request.want_text,
            endpoint=endpoint,
            full=bool(request.top_logprobs),
            max_event_bytes=self.args.max_event_bytes,
        )
        end_ns = 0
        url = self._base + _PATHS[endpoint]
        headers = {"X-Request-Id": request.request_id}
        if request.headers:
            headers = {**request.headers, **headers}
        if not request.stream:
            async for event in self._whole(url, payload, headers, state):
                yield event
            return
        try:
            async with await post_once_more_if_stale(
                self._session, url, payload, headers, probe=self.arrivals
            ) as resp:
                if resp.status >= 300:
                    raise await read_error_body(resp)
                body = PushedBody(reader.feed)
                async for chunk in body.events(resp):
                    yield chunk
                end_ns = body.last_ns
                for ev in reader.close():
                    for chunk in parse_payload(ev.data, end_ns, state):
                        yield chunk
        except aiohttp.ClientError as e:
            raise failure_from(e) from e
        if not state.done and state.finish_reason is None:
            raise RequestFailedError("invalid_response", "stream ended without [DONE] or finish_reason")
        yield state.end(end_ns)

    async def _whole(
        self, url: str, payload: bytes, headers: dict[str, str], state: _StreamState
    ) -> AsyncIterator[StreamEvent]:
        """A non-streaming request: the answer comes in one body, stamped when its last byte was read."""
        assert self._session is not None
        try:
            async with await post_once_more_if_stale(
                self._session, url, payload, headers, probe=self.arrivals
            ) as resp:
                if resp.status >= 300:
                    raise await read_error_body(resp)
                raw = await resp.content.read(self.args.max_event_bytes + 1)
                if len(raw) > self.args.max_event_bytes:
                    raise RequestFailedError(
                        "invalid_response", "the response is larger than max_event_bytes"
                    )
        except aiohttp.ClientError as e:
            raise failure_from(e) from e
        end_ns = time.perf_counter_ns()
        try:
            obj = json.loads(raw)
        except ValueError as e:
            raise RequestFailedError("invalid_response", f"malformed JSON: {raw[:120]!r}") from e
        choices = obj.get("choices") if isinstance(obj, dict) else None
        if isinstance(choices, list) and choices and isinstance(choices[0], dict) and "message" in choices[0]:
            choices[0] = {**choices[0], "delta": choices[0]["message"]}  # read as one last stream event
        for chunk in parse_payload(json.dumps(obj), end_ns, state):
            yield chunk
        if state.finish_reason is None:
            raise RequestFailedError("invalid_response", "the response has no finish_reason")
        yield state.end(end_ns)


_ANSWER_RE = re.compile(rb'"(?:content|text)":"([^"]*)"')
_REASONING_RE = re.compile(rb'"(?:reasoning_content|reasoning)":"([^"]*)"')
_ORDINARY_END = b'"finish_reason":null'


class ChunkReader:
    """Socket reads → Chunks, with the whole-read fast path the hot loop needs.

    The text-bearing events of a read are counted, and their text pulled out only when ``text`` is
    asked for, by two or three C-level scans over the whole read — never a JSON parse, nor a Python
    step, per event. A key pattern such as ``"content":"`` cannot match inside a JSON string (every
    quote there is escaped), so counting it counts events with text, whatever else the stream
    interleaves (comments, ``id:`` lines). Everything from the last ordinary event on (one with
    ``"finish_reason":null``) — the closing events with finish reason, usage, timings, ``[DONE]`` — goes
    through the full SSE rules and ``parse_payload``, and so does a whole stream with CRLF line ends
    (decided at its first line), and any read whose text has escapes when text is kept.

    A usage, timings or metrics object riding on an ordinary mid-stream event (OpenAI's ``"usage":null``,
    vLLM's continuous usage stats, llama.cpp's per-token timings) is not read: the closing events carry
    the final figures, which the full rules always read.
    """

    __slots__ = ("_crlf", "_empty", "_key", "_parser", "_pending", "full", "state", "text")

    def __init__(
        self,
        state: _StreamState,
        *,
        text: bool = True,
        endpoint: str = "chat",
        full: bool = False,
        max_event_bytes: int = MAX_EVENT_BYTES,
    ) -> None:
        self._parser = SSEParser(max_event_bytes)
        self._pending = Held(max_event_bytes)
        self._crlf: bool | None = None
        self.state = state
        self.text = text
        self.full = full
        self._key = b'"content":"' if endpoint == "chat" else b'"text":"'
        self._empty = self._key + b'"'

    def feed(self, data: bytes, t_ns: int) -> list[Chunk]:
        """Chunks completed by ``data``, stamped ``t_ns``."""
        if self.full:  # every event through the full rules (logprobs asked for)
            return _read_chunks(self._parser.feed_payloads(data), t_ns, self.state, full=True)
        buf = self._pending.add(data)
        if buf is None:  # an event still unfinished: held until a read brings a line end
            return []
        if self._crlf is None:  # a server's line ends are the same throughout: look at its first line
            first = buf.find(b"\n")
            if first >= 0:
                self._crlf = buf[first - 1 : first] == b"\r"
        if self._crlf is not False or self._parser.busy:
            return _read_chunks(self._parser.feed_payloads(buf), t_ns, self.state)
        end = buf.rfind(b"\n\n")
        if end < 0:
            self._pending.keep(buf)
            return []
        block = buf[: end + 2]
        self._pending.keep(buf[end + 2 :])
        # The last event that may be ordinary ends the bulk; whatever follows is for the full rules.
        last = block.rfind(_ORDINARY_END)
        cut = block.find(b"\n\n", last) + 2 if last >= 0 else 0
        bulk, rest = (block, b"") if cut == len(block) else (block[:cut], block[cut:])
        out = self._bulk(bulk, t_ns) if bulk else []
        if rest:
            out += _read_chunks(self._parser.feed_payloads(rest), t_ns, self.state)
        return out

    def close(self) -> list[SSEEvent]:
        """End of body: whatever the full rules still hold."""
        pending = self._pending.take()
        events = self._parser.feed(pending) if pending else []
        return events + self._parser.close()

    def _bulk(self, bulk: bytes, t_ns: int) -> list[Chunk]:
        if self.text and b"\\" in bulk:  # escaped text: only the JSON parser unescapes it right
            return _read_chunks(self._parser.feed_payloads(bulk), t_ns, self.state)
        out: list[Chunk] = []
        if b'"reasoning' in bulk:
            reasoning = _REASONING_RE.findall(bulk)
            if k := len(reasoning) - reasoning.count(b""):
                text = b"".join(reasoning).decode("utf-8", errors="replace") if self.text else ""
                out.append(Chunk(t_ns, text, True, k))
        if self.text:
            answers = _ANSWER_RE.findall(bulk)
            if k := len(answers) - answers.count(b""):
                out.append(Chunk(t_ns, b"".join(answers).decode("utf-8", errors="replace"), False, k))
        elif k := bulk.count(self._key) - bulk.count(self._empty):
            out.append(Chunk(t_ns, "", False, k))
        return out


def _read_chunks(payloads: list[bytes], t_ns: int, state: _StreamState, full: bool = False) -> list[Chunk]:
    """One socket read's payloads → at most one reasoning and one answer Chunk (with counts)."""
    answers: list[str] = []
    reasonings: list[str] = []
    for payload in payloads:
        fast = None if full else fast_payload(payload)
        if fast is None:
            for c in parse_payload(payload.decode("utf-8", errors="replace"), t_ns, state):
                (reasonings if c.reasoning else answers).append(c.text)
            continue
        if fast[1]:
            reasonings.append(fast[1])
        if fast[0]:
            answers.append(fast[0])
    out: list[Chunk] = []
    if reasonings:
        out.append(Chunk(t_ns, "".join(reasonings), reasoning=True, count=len(reasonings)))
    if answers:
        out.append(Chunk(t_ns, "".join(answers), count=len(answers)))
    return out


def _flatten(messages: list[dict[str, str]] | None) -> str:
    return "\n\n".join(m.get("content", "") for m in messages or [])
