"""Ollama's native API: ``/api/chat`` and ``/api/generate`` streamed as newline-delimited JSON.

The control plane (which models the server has, what ``/api/show`` says of one, whether it is loaded, and
unloading it for a measured cold start) goes through the official ``ollama`` package; the timed data plane
stays on our own aiohttp client, stamped per socket read.

Native timings come from the final (``done: true``) object, in **nanoseconds** (method §1):
``prompt_eval_duration`` → prefill, ``eval_duration`` → decode, ``load_duration`` → load,
``total_duration`` → native total. A field the server leaves out (``prompt_eval_count`` and its duration
vanish when the whole prompt came from cache) stays ``None`` in the record; it is never read as zero.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
import structlog
from pydantic import Field

from agent.backends.base import CliContext, HttpBackendArgs, register
from agent.core.errors import BackendError, RequestFailedError
from agent.core.record import Chunk, GenerationRequest, NativeTimings, StreamEnd, StreamEvent, Usage
from agent.transport.http import failure_from, open_session, post_once_more_if_stale, read_error_body
from agent.transport.ndjson import LineSplitter
from agent.transport.probe import ArrivalProbe
from agent.transport.socket_clock import PushedBody, clock

__all__ = [
    "OllamaArgs",
    "OllamaBackend",
    "OllamaControl",
    "OllamaStreamState",
    "options_for",
    "parse_line",
]

logger = structlog.get_logger(__name__)

#: Sampling keys Ollama accepts inside ``options`` (the rest of a scenario's sampling is not sent).
_OPTION_KEYS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "stop",
    "repeat_penalty",
    "presence_penalty",
    "frequency_penalty",
)


def _default_base_url() -> str:
    host = os.environ.get("OLLAMA_HOST", "").strip()
    if not host:
        return "http://127.0.0.1:11434"
    if "://" not in host:
        host = "http://" + host
    if host.count(":") < 2:  # no port given
        host += ":11434"
    return host


class OllamaArgs(HttpBackendArgs):
    """Arguments of the ``ollama`` backend."""

    base_url: str = Field(default_factory=_default_base_url, description="default: $OLLAMA_HOST or :11434")
    model: str | None = Field(None, description="model tag; None takes the first one /api/tags lists")
    api: Literal["chat", "generate"] | None = Field(
        None, description="force one API; None maps each request's endpoint (completions → generate)"
    )
    num_ctx: int | None = Field(None, ge=1, description="context window (options.num_ctx)")
    keep_alive: str | int | None = Field(None, description='how long the model stays loaded, e.g. "5m" or 0')
    raw: bool = Field(False, description="/api/generate without the model's prompt template")
    think: bool | None = Field(None, description="ask thinking models to think (or not); None leaves it")
    cold_start_load_ms: float = Field(
        500.0, ge=0, description="a load_duration above this marks the record cold_start"
    )
    unload_first: bool = Field(
        False,
        description="unload the model before the run, so the first request pays the load (a measured "
        "cold start; with --warmup 0 that request is kept)",
    )
    label: str = Field("ollama", description="the backend name written into records")

    @classmethod
    def from_cli(cls, ctx: CliContext) -> dict[str, object]:
        """``--base-url`` and ``--model`` where given."""
        given = {"base_url": ctx.base_url, "model": ctx.model}
        return {**super().from_cli(ctx), **{k: v for k, v in given.items() if v is not None}}


@dataclass(slots=True)
class OllamaStreamState:
    """What the final object told us; ``done`` once it arrived."""

    done: bool = False
    finish_reason: str | None = None
    usage: Usage | None = None
    native: NativeTimings | None = None


def _ns_to_ms(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value / 1e6


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _final(obj: dict[str, object], state: OllamaStreamState, cold_start_load_ms: float) -> None:
    state.done = True
    reason = obj.get("done_reason")
    state.finish_reason = reason if isinstance(reason, str) else None
    load = _ns_to_ms(obj.get("load_duration"))
    state.native = NativeTimings(
        source="ollama",
        prefill_ms=_ns_to_ms(obj.get("prompt_eval_duration")),
        decode_ms=_ns_to_ms(obj.get("eval_duration")),
        load_ms=load,
        total_ms=_ns_to_ms(obj.get("total_duration")),
        prompt_n=_count(obj.get("prompt_eval_count")),
        predicted_n=_count(obj.get("eval_count")),
        cold_start=load is not None and load > cold_start_load_ms,
    )
    state.usage = Usage(
        prompt_tokens=_count(obj.get("prompt_eval_count")),
        output_tokens=_count(obj.get("eval_count")),
        source="server",
    )


def parse_line(
    line: bytes, t_ns: int, state: OllamaStreamState, *, cold_start_load_ms: float = 500.0
) -> list[Chunk]:
    """Interpret one NDJSON line of ``/api/chat`` or ``/api/generate``; update ``state``; return chunks."""
    try:
        obj = json.loads(line)
    except ValueError as e:
        raise RequestFailedError("invalid_response", f"malformed JSON line: {line[:120]!r}") from e
    if not isinstance(obj, dict):
        raise RequestFailedError("invalid_response", f"stream line is not an object: {line[:120]!r}")
    if "error" in obj:
        raise RequestFailedError("invalid_response", f"server error in stream: {str(obj['error'])[:200]}")
    if state.done:
        raise RequestFailedError("invalid_response", "data after the final done:true object")
    message = obj.get("message")
    if isinstance(message, dict):  # /api/chat
        thinking, text = message.get("thinking"), message.get("content")
    else:  # /api/generate
        thinking, text = obj.get("thinking"), obj.get("response")
    out: list[Chunk] = []
    if thinking and isinstance(thinking, str):
        out.append(Chunk(t_ns, thinking, reasoning=True))
    if text and isinstance(text, str):
        out.append(Chunk(t_ns, text))
    if obj.get("done") is True:
        _final(obj, state, cold_start_load_ms)
    return out


def options_for(req: GenerationRequest, num_ctx: int | None) -> dict[str, object]:
    """Ollama ``options`` for one request: num_predict from max_tokens, then the known sampling keys."""
    options: dict[str, object] = {"num_predict": req.max_tokens}
    options.update({k: v for k, v in req.sampling.items() if k in _OPTION_KEYS})
    if num_ctx is not None:
        options["num_ctx"] = num_ctx
    return options


@register("ollama", OllamaArgs)
class OllamaBackend:
    """Streams from an Ollama server (or anything speaking its API) through one pooled session."""

    def __init__(self, args: OllamaArgs, *, arrivals: ArrivalProbe | None = None) -> None:
        self.args = args
        #: the probe this backend's connections report to (one a wrapping backend shares, or its own)
        self.arrivals = arrivals or ArrivalProbe()
        self.name = args.label
        self.model = args.model or ""
        self._base = args.base_url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None
        self._version: str | None = None
        self._facts: dict[str, object] = {}
        self._loaded_before: bool | None = None

    async def start(self) -> None:
        """Open the pooled session, read the server version, then ask the control plane.

        The model is the first one listed when none was given, else checked against the list; it is
        unloaded when asked; whether it is loaded and what ``/api/show`` says of it go to the manifest.
        """
        if self._session is not None:
            return
        self._session = open_session(
            {"Content-Type": "application/json"},
            probe=self.arrivals,
            max_connections=self.args.max_connections,
            connect_timeout_s=self.args.connect_timeout_s,
        )
        self._version = await self._get_field("/api/version", "version")
        async with OllamaControl(self._base, self.args.connect_timeout_s) as control:
            self.model = control.pick(self.model, await control.models())
            if self.args.unload_first:
                await control.unload(self.model)
            self._loaded_before = await control.loaded(self.model)
            self._facts = await control.facts(self.model)

    async def _get_field(self, path: str, key: str) -> str | None:
        """One field of a GET answer; an unreachable server is a clear error."""
        assert self._session is not None
        url = self._base + path
        try:
            async with self._session.get(url) as resp:
                body = await resp.json(content_type=None) if resp.status < 300 else None
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            raise BackendError(_unreachable(url, e)) from e
        value = body.get(key) if isinstance(body, dict) else None
        return str(value) if value is not None else None

    async def close(self) -> None:
        """Close the session; safe to call twice."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def describe(self) -> dict[str, object]:
        """Manifest facts: server URL, version, the model tag and what ``/api/show`` says of it."""
        return {
            "backend": self.name,
            "base_url": self._base,
            "model": self.model,
            "ollama_version": self._version,
            "api": self.args.api or "per request",
            "quantization": self._facts.get("quantization"),
            "model_facts": self._facts,
            "unloaded_first": self.args.unload_first,
            "loaded_before_run": self._loaded_before,
            **clock(),
        }

    def _body(self, req: GenerationRequest, api: str) -> dict[str, object]:
        options = options_for(req, self.args.num_ctx)
        body: dict[str, object] = {"model": req.model or self.model, "stream": req.stream, "options": options}
        if api == "chat":
            body["messages"] = req.messages or [{"role": "user", "content": req.prompt or ""}]
        else:
            body["prompt"], system = _prompt_and_system(req)
            if system:
                body["system"] = system
            if self.args.raw:
                body["raw"] = True
        if self.args.keep_alive is not None:
            body["keep_alive"] = self.args.keep_alive
        if self.args.think is not None:
            body["think"] = self.args.think
        if req.extra_body:  # Ollama's own fields (``options`` merged, anything else as given)
            extra = dict(req.extra_body)
            more = extra.pop("options", None)
            body["options"] = {**options, **more} if isinstance(more, dict) else options
            body.update(extra)
        return body

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        """POST the request and yield chunks stamped per socket read, then one StreamEnd."""
        if self._session is None:
            raise RuntimeError("backend not started: call start() first")
        api = self.args.api or ("chat" if request.endpoint == "chat" else "generate")
        payload = json.dumps(self._body(request, api)).encode()
        state = OllamaStreamState()
        lines = LineSplitter(self.args.max_event_bytes)
        cold = self.args.cold_start_load_ms
        end_ns = 0
        try:
            url = f"{self._base}/api/{api}"
            headers = {"X-Request-Id": request.request_id}
            if request.headers:
                headers = {**request.headers, **headers}
            async with await post_once_more_if_stale(
                self._session, url, payload, headers, probe=self.arrivals
            ) as resp:
                if resp.status >= 300:
                    raise await read_error_body(resp)

                def parse(data: bytes, t_ns: int) -> list[Chunk]:
                    return [
                        chunk
                        for line in lines.feed(data)
                        for chunk in parse_line(line, t_ns, state, cold_start_load_ms=cold)
                    ]

                body = PushedBody(parse)
                async for chunk in body.events(resp):
                    yield chunk
                end_ns = body.last_ns
                for line in lines.close():
                    for chunk in parse_line(line, end_ns, state, cold_start_load_ms=cold):
                        yield chunk
        except aiohttp.ClientError as e:
            raise failure_from(e) from e
        if not state.done:
            raise RequestFailedError("invalid_response", "stream ended without a done:true object")
        yield StreamEnd(end_ns, usage=state.usage, native=state.native, finish_reason=state.finish_reason)


def _prompt_and_system(req: GenerationRequest) -> tuple[str, str | None]:
    if req.prompt is not None:
        return req.prompt, None
    messages = req.messages or []
    system = "\n\n".join(m.get("content", "") for m in messages if m.get("role") == "system") or None
    prompt = "\n\n".join(m.get("content", "") for m in messages if m.get("role") != "system")
    return prompt, system


def _unreachable(url: str, e: BaseException) -> str:
    return (
        f"could not reach Ollama at {url} ({e.__class__.__name__}: {e}); "
        "start it (`ollama serve`) or set --base-url / OLLAMA_HOST"
    )


class OllamaControl:
    """Ollama's control plane through the official ``ollama`` package: list, show, ps and unload.

    One client for every call; use it as ``async with OllamaControl(url, timeout) as control``.
    """

    def __init__(self, base_url: str, timeout_s: float) -> None:
        import httpx
        import ollama

        self.base_url = base_url
        self._client = ollama.AsyncClient(host=base_url, timeout=timeout_s)
        #: any answer but the one asked for
        self._failed: tuple[type[Exception], ...] = (
            ollama.ResponseError,
            httpx.HTTPError,
            ValueError,
            TypeError,
        )

    async def __aenter__(self) -> OllamaControl:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.close()  # type: ignore[no-untyped-call]  # the package leaves it unannotated

    async def models(self) -> list[str]:
        """The model tags the server has (``/api/tags``)."""
        try:
            listed = await self._client.list()
        except self._failed as e:
            raise BackendError(_unreachable(self.base_url + "/api/tags", e)) from e
        return [m.model for m in listed.models if m.model]

    def pick(self, wanted: str, names: list[str]) -> str:
        """``wanted`` as the server names it, or the first listed model when none was asked for."""
        if not wanted:
            if not names:
                raise BackendError(f"{self.base_url} has no models; `ollama pull` one or pass --model")
            return names[0]
        for name in (wanted, f"{wanted}:latest"):
            if name in names:
                return name
        have = ", ".join(names[:10]) or "none"
        raise BackendError(
            f"model {wanted!r} is not on the server at {self.base_url} (it has: {have}); "
            f"`ollama pull {wanted}`"
        )

    async def unload(self, model: str) -> None:
        """Unload ``model`` now (an empty generate with ``keep_alive: 0``), so the next request loads it."""
        try:
            await self._client.generate(model=model, keep_alive=0)
        except self._failed as e:
            raise BackendError(f"could not unload {model} at {self.base_url}: {e}") from e

    async def loaded(self, model: str) -> bool | None:
        """Whether ``model`` is loaded (``/api/ps``); None when the server does not say."""
        try:
            running = await self._client.ps()
        except self._failed:
            return None
        return any(m.model == model or m.name == model for m in running.models)

    async def facts(self, model: str) -> dict[str, object]:
        """What ``/api/show`` says of ``model``: family, size, quantisation, context length.

        Never fatal (an old server may not answer it): the reason is kept instead.
        """
        try:
            show = await self._client.show(model)
        except self._failed as e:
            return {"unavailable": f"/api/show: {e.__class__.__name__}: {e}"}
        details = show.details
        info = dict(show.modelinfo or {})
        arch = info.get("general.architecture")
        return {
            "format": details.format if details else None,
            "family": details.family if details else None,
            "parameter_size": details.parameter_size if details else None,
            "quantization": details.quantization_level if details else None,
            "parameters": info.get("general.parameter_count"),
            "context_length": info.get(f"{arch}.context_length") if arch else None,
        }
