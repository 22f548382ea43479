"""Property tests: truncated, garbled, interleaved SSE/NDJSON bodies always end as a record, never a crash."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.backends import create
from agent.backends.ollama import OllamaStreamState, parse_line
from agent.backends.openai import _StreamState, parse_payload
from agent.core.errors import RequestFailedError
from agent.core.record import REASONS
from agent.core.scenario import Scenario
from agent.run.runner import RunContext, Runner
from agent.transport.ndjson import LineSplitter
from agent.transport.sse import SSEParser

_SSE_GOOD = [
    b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":null}}]}\n\n',
    b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n',
    b'data: {"choices":[{"index":0,"delta":{"reasoning_content":"hm"}}]}\n\n',
    b": keep-alive\n\n",
    b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"completion_tokens":2}}\n\n',
    b'data: {"choices":[],"timings":{"prompt_ms":1.0,"predicted_ms":2.0,"prompt_n":3,"predicted_n":2}}\n\n',
    b"data: [DONE]\n\n",
]
_NDJSON_GOOD = [
    b'{"model":"m","message":{"role":"assistant","content":"Hi"},"done":false}\n',
    b'{"model":"m","message":{"role":"assistant","content":"","thinking":"hm"},"done":false}\n',
    b'{"model":"m","response":"yo","done":false}\n',
    b'{"done":true,"eval_count":2,"eval_duration":2000000,"prompt_eval_duration":1000000,"load_duration":5}\n',
]
_JUNK = [
    b"\x00\xff",
    b"{",
    b"}",
    b"data:",
    b"\n",
    b"\r\n",
    b"data: {broken\n\n",
    b'{"error":"boom"}\n',
    b"[1]\n",
]


def _bodies(good: list[bytes]) -> st.SearchStrategy[bytes]:
    """Pieces of valid streams, shuffled, repeated, mixed with junk and raw bytes, truncated anywhere."""
    piece = st.one_of(st.sampled_from(good), st.sampled_from(_JUNK), st.binary(max_size=24))
    return st.tuples(st.lists(piece, max_size=12), st.integers(0, 4000)).map(lambda t: b"".join(t[0])[: t[1]])


def _cuts(body: bytes, seeds: list[int]) -> list[bytes]:
    points = sorted({s % (len(body) + 1) for s in seeds})
    out, prev = [], 0
    for p in [*points, len(body)]:
        out.append(body[prev:p])
        prev = p
    return out


@settings(max_examples=400, deadline=None)
@given(body=_bodies(_SSE_GOOD), seeds=st.lists(st.integers(0, 10_000), max_size=8))
def test_sse_parsing_only_ever_fails_as_invalid_response(body: bytes, seeds: list[int]) -> None:
    parser, state = SSEParser(), _StreamState()
    try:
        for piece in _cuts(body, seeds):
            for ev in parser.feed(piece):
                parse_payload(ev.data, 0, state)
        for ev in parser.close():
            parse_payload(ev.data, 0, state)
    except RequestFailedError as e:
        assert e.reason == "invalid_response"


@settings(max_examples=400, deadline=None)
@given(body=_bodies(_NDJSON_GOOD), seeds=st.lists(st.integers(0, 10_000), max_size=8))
def test_ndjson_parsing_only_ever_fails_as_invalid_response(body: bytes, seeds: list[int]) -> None:
    lines, state = LineSplitter(), OllamaStreamState()
    try:
        for piece in _cuts(body, seeds):
            for line in lines.feed(piece):
                parse_line(line, 0, state)
        for line in lines.close():
            parse_line(line, 0, state)
    except RequestFailedError as e:
        assert e.reason == "invalid_response"


class RawServer:
    """Answers every generation with 200 and the next scripted body, written in the scripted pieces.

    Ollama's control plane (``GET /api/*``, ``POST /api/show``) gets fixed answers naming model ``m``.
    """

    def __init__(self, content_type: bytes) -> None:
        self.content_type = content_type
        self.script: list[list[bytes]] = []
        self.url = ""
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")), 0
        )
        await reader.readexactly(length)
        path = head.split(b" ")[1]
        control = _CONTROL.get(path)
        pieces = [control] if control else self.script.pop(0) if self.script else [b""]
        ctype = b"application/json" if control else self.content_type
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: " + ctype + b"\r\nConnection: close\r\n\r\n")
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
        writer.close()


_CONTROL = {
    b"/api/version": b'{"version": "0.9.0"}',
    b"/api/tags": b'{"models": [{"name": "m", "model": "m"}]}',
    b"/api/ps": b'{"models": []}',
    b"/api/show": b'{"details": {"format": "gguf", "quantization_level": "Q4_0"}, "model_info": {}}',
}


class ListSink:
    def __init__(self) -> None:
        self.records: list[Any] = []

    def write(self, record: Any) -> None:
        self.records.append(record)


def _reasons() -> set[str]:
    return {r for r in REASONS if r != "http_<code>"}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sse=st.lists(
        st.tuples(_bodies(_SSE_GOOD), st.lists(st.integers(0, 10_000), max_size=4)), min_size=3, max_size=3
    ),
    nd=st.lists(
        st.tuples(_bodies(_NDJSON_GOOD), st.lists(st.integers(0, 10_000), max_size=4)), min_size=3, max_size=3
    ),
)
def test_every_stream_becomes_exactly_one_record(
    sse: list[tuple[bytes, list[int]]], nd: list[tuple[bytes, list[int]]]
) -> None:
    async def scenario_run(
        kind: str, content_type: bytes, bodies: list[tuple[bytes, list[int]]]
    ) -> list[Any]:
        async with RawServer(content_type) as srv:
            srv.script = [_cuts(b, seeds) for b, seeds in bodies]
            backend = create(kind, {"base_url": srv.url, "model": "m"})
            sc = Scenario.model_validate(
                {
                    "name": "prop",
                    "prompts": ["x"],
                    "requests": 3,
                    "concurrency": 1,
                    "warmup": 0,
                    "timeout": {"first_token_s": 5, "total_s": 5},
                }
            )
            sink = ListSink()
            await backend.start()
            try:
                await Runner(sc, backend, sink, RunContext("p")).run()
            finally:
                await backend.close()
            return sink.records

    for kind, ctype, bodies in (
        ("openai", b"text/event-stream", sse),
        ("ollama", b"application/x-ndjson", nd),
    ):
        records = asyncio.run(scenario_run(kind, ctype, bodies))
        assert len(records) == 3
        for r in records:
            assert r.status == "ok" or r.reason in _reasons(), r.reason
            assert r.reason != "client_error", r.detail
            json.loads(r.model_dump_json())
