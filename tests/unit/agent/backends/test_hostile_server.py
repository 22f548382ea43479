"""Hostile bytes from a server: whatever a server sends, a request ends as a record with the right
reason, in linear time and bounded memory; a server that answered is never called unreachable."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from agent.backends import create
from agent.core.errors import RequestFailedError
from agent.core.record import Chunk, GenerationRequest, StreamEnd

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
MODELS = b'{"object":"list","data":[{"id":"hostile"}]}'


@asynccontextmanager
async def raw_server(answer: Callable[[], list[bytes]]) -> AsyncIterator[str]:
    """Answers /v1/models properly and every other request with ``answer()``'s bytes, then closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        if length:
            await reader.readexactly(length)
        try:
            if head.startswith(b"GET /v1/models"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
                writer.write(b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(MODELS) + MODELS)
            else:
                for piece in answer():
                    writer.write(piece)
                    await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


async def outcome(answer: Callable[[], list[bytes]], **args: object) -> list[object]:
    async with raw_server(answer) as url:
        backend = create("openai", {"base_url": url, **args})
        await backend.start()
        try:
            req = GenerationRequest(request_id="r", prompt="hi", max_tokens=4)
            return [ev async for ev in backend.stream(req)]
        finally:
            await backend.close()


def event(text: str) -> bytes:
    return (
        b'data: {"choices":[{"index":0,"delta":{"content":"'
        + text.encode()
        + b'"},"finish_reason":null}]}\n\n'
    )


@pytest.mark.parametrize(
    ("name", "answer"),
    [
        ("garbage status line", lambda: [b"HTTP/1.1 abc def\r\n\r\n"]),
        ("not HTTP at all", lambda: [b"\x00\x01\x02 hello\r\n\r\n"]),
        (
            "bad chunk size",
            lambda: [HEAD.replace(b"Connection: close", b"Transfer-Encoding: chunked"), b"zz\r\n"],
        ),
        ("a 1 MB header", lambda: [b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n"]),
    ],
)
async def test_a_server_that_answers_garbage_is_invalid_response_not_unreachable(
    name: str, answer: Callable[[], list[bytes]]
) -> None:
    with pytest.raises(RequestFailedError) as info:
        await outcome(answer)
    assert info.value.reason == "invalid_response", (name, info.value)


async def test_an_endless_line_is_cut_at_the_cap_in_linear_time() -> None:
    piece = b"x" * 65536

    def endless() -> list[bytes]:
        return [HEAD, b"data: ", *([piece] * 400)]  # 25 MB with no line end

    with pytest.raises(RequestFailedError, match="max_event_bytes") as info:
        await outcome(endless, max_event_bytes=1 << 20)
    assert info.value.reason == "invalid_response"


async def test_events_at_the_cap_still_pass() -> None:
    big = "y" * 200_000

    def answer() -> list[bytes]:
        final = b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}\n\ndata: [DONE]\n\n'
        return [HEAD, event(big)[:1000], event(big)[1000:], final]

    events = await outcome(answer, max_event_bytes=300_000)
    assert "".join(e.text for e in events if isinstance(e, Chunk)) == big
    assert isinstance(events[-1], StreamEnd)
