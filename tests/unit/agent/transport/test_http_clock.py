"""Arrival times come from the socket read, not from when a task gets round to the bytes."""

from __future__ import annotations

import itertools

import aiohttp
import pytest
from aiohttp import web

from agent.backends import create
from agent.core.record import Chunk, GenerationRequest, StreamEnd, StreamEvent
from agent.transport import http, socket_clock
from agent.transport.probe import ArrivalProbe
from tests.sse_server import ScriptedServer

REQ = GenerationRequest(request_id="r1", prompt="hi", max_tokens=3, endpoint="chat")
GAP_S = 0.04


async def slow_consumer(url: str) -> list[StreamEvent]:
    """Stream, but stall for longer than the whole response right after the first event."""
    import asyncio

    backend = create("openai", {"base_url": url, "model": "m"})
    await backend.start()
    events: list[StreamEvent] = []
    try:
        async for ev in backend.stream(REQ):
            if not events:
                await asyncio.sleep(GAP_S * 8)
            events.append(ev)
    finally:
        await backend.close()
    return events


def gaps_ms(events: list[StreamEvent]) -> list[float]:
    chunks = [e for e in events if isinstance(e, Chunk)]
    assert "".join(c.text for c in chunks) == "Hello there friend"
    stamps = [c.t_ns for c in chunks for _ in range(c.count)]  # one per event; a read may hold several
    return [(b - a) / 1e6 for a, b in itertools.pairwise(stamps)]


async def test_a_stalled_reader_still_sees_when_each_event_arrived() -> None:
    assert socket_clock.STAMPING, "this aiohttp's connection protocol changed shape; socket stamps are off"
    async with ScriptedServer() as srv:
        srv.mode, srv.gap_s = "paced", GAP_S
        events = await slow_consumer(srv.url)
    # the server wrote an event every 40 ms while the reader slept 320 ms: the stamps keep the pacing
    assert all(g > GAP_S * 1000 * 0.5 for g in gaps_ms(events))
    end = events[-1]
    assert isinstance(end, StreamEnd) and end.t_ns >= events[-2].t_ns


def test_the_manifest_says_which_clock_stamped(monkeypatch: pytest.MonkeyPatch) -> None:
    import aiohttp

    from agent.backends import create

    backend = create("openai", {"base_url": "http://127.0.0.1:9", "model": "m"})
    assert backend.describe()["clock"] == "socket" and backend.describe()["aiohttp"] == aiohttp.__version__
    monkeypatch.setattr(socket_clock, "STAMPING", False)
    assert backend.describe()["clock"] == "task"


async def test_without_socket_stamps_the_reader_stamps_what_it_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket_clock, "STAMPING", False)
    async with ScriptedServer() as srv:
        srv.mode, srv.gap_s = "paced", GAP_S
        events = await slow_consumer(srv.url)
    # the fallback: what arrived during the stall is stamped when it is read, all at once
    assert min(gaps_ms(events)) < GAP_S * 1000 * 0.5


async def test_plain_bodies_larger_than_the_read_buffer_arrive_whole() -> None:
    """Flow control still works on stamping connections: reading pauses and resumes."""
    blob = bytes(range(256)) * 8192  # 2 MiB

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=blob)

    app = web.Application()
    app.router.add_get("/big", big)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    session = http.open_session({}, probe=ArrivalProbe(), max_connections=64, connect_timeout_s=10.0)
    try:
        for _ in range(2):  # the second request reuses the connection
            async with session.get(f"http://127.0.0.1:{port}/big") as resp:
                assert isinstance(resp.connection.protocol, socket_clock.StampingHandler)  # type: ignore[union-attr]
                assert await resp.read() == blob
            async with session.get(f"http://127.0.0.1:{port}/big") as resp:
                got = b"".join([chunk async for chunk in resp.content.iter_chunked(65536)])
                assert got == blob
    finally:
        await session.close()
        await runner.cleanup()


async def test_a_failing_parser_fails_the_request_not_the_connection() -> None:
    from agent.core.errors import RequestFailedError

    async with ScriptedServer() as srv:
        backend = create("openai", {"base_url": srv.url, "model": "m"})
        await backend.start()
        try:
            srv.mode = "malformed"
            with pytest.raises(RequestFailedError):
                [ev async for ev in backend.stream(REQ)]
            srv.mode = "ok"  # the pool goes on serving
            events = [ev async for ev in backend.stream(REQ)]
            assert isinstance(events[-1], StreamEnd)
        finally:
            await backend.close()


def test_session_connections_are_stamping_handlers() -> None:
    assert issubclass(socket_clock.StampingHandler, aiohttp.client_proto.ResponseHandler)


async def test_a_body_complete_before_the_task_looks_keeps_its_read_times() -> None:
    """The whole response arrived (and its connection went back to the pool) before anyone read it."""
    import asyncio
    import time

    async with ScriptedServer() as srv:
        session = http.open_session({}, probe=ArrivalProbe(), max_connections=64, connect_timeout_s=10.0)
        try:
            async with session.post(f"{srv.url}/v1/chat/completions", json={"model": "m"}) as resp:
                await asyncio.sleep(0.2)
                assert resp.connection is None  # released: the body is complete
                looked = time.perf_counter_ns()
                body: socket_clock.PushedBody[int] = socket_clock.PushedBody(lambda data, t_ns: [t_ns])
                stamps = [t async for t in body.events(resp)]
        finally:
            await session.close()
    assert stamps and all(t < looked - 100_000_000 for t in stamps)
    assert body.last_ns == stamps[-1]


class _Flow:
    """The flow-control half of a connection, counting how often reading was resumed."""

    def __init__(self) -> None:
        self.resumed = 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        self.resumed += 1


def _state(payload: aiohttp.StreamReader) -> tuple[object, ...]:
    return (payload._size, payload._cursor, payload.total_bytes, list(payload._http_chunk_splits or ()))


async def test_draining_a_body_leaves_it_as_aiohttp_own_drain_does() -> None:
    """``_buffered`` takes the whole buffer in one join; the reader's state must match ``read_nowait``."""
    import asyncio

    loop = asyncio.get_running_loop()
    ours, theirs = _Flow(), _Flow()
    mine = aiohttp.StreamReader(ours, 2**16, loop=loop)  # type: ignore[arg-type]
    ref = aiohttp.StreamReader(theirs, 2**16, loop=loop)  # type: ignore[arg-type]
    for payload in (mine, ref):
        payload.begin_http_chunk_receiving()

    def feed(*pieces: bytes) -> None:
        for piece in pieces:
            for payload in (mine, ref):
                payload.feed_data(piece)
                payload.end_http_chunk_receiving()

    feed(b"data: one\n\n", b"data: two\n\n", b"data: three\n\n")
    assert socket_clock._buffered(mine) == ref.read_nowait() == b"data: one\n\ndata: two\n\ndata: three\n\n"
    assert _state(mine) == _state(ref)
    assert socket_clock._buffered(mine) == ref.read_nowait() == b""  # nothing new: nothing read
    feed(b"data: four\n\n")
    assert socket_clock._buffered(mine) == ref.read_nowait() == b"data: four\n\n"
    assert _state(mine) == _state(ref)
    assert ours.resumed == 2 and theirs.resumed  # reading resumed after each drain (aiohttp: each piece)
    # a reader that took part of the first piece itself: the rest comes through aiohttp's own drain
    feed(b"data: five\n\n", b"data: six\n\n")
    assert mine.read_nowait(6) == ref.read_nowait(6) == b"data: "
    assert socket_clock._buffered(mine) == ref.read_nowait() == b"five\n\ndata: six\n\n"
    assert _state(mine) == _state(ref)
    mine.set_exception(ValueError("broken"))
    assert socket_clock._buffered(mine) == b""


def test_this_aiohttp_is_one_the_socket_clock_was_proven_on() -> None:
    """The clock reads aiohttp's private internals: a release it was not measured on must fail here first.

    To trust a new aiohttp: run this file, ``test_probe.py`` and ``benchmarks/client.py``, then add its
    major.minor to ``socket_clock.TESTED`` and move the bound in ``pyproject.toml``.
    """
    release = ".".join(aiohttp.__version__.split(".")[:2])
    assert release in socket_clock.TESTED, (
        f"aiohttp {aiohttp.__version__} is not among the releases the socket clock was proven on "
        f"({', '.join(socket_clock.TESTED)})"
    )
    assert socket_clock.STAMPING and socket_clock.clock()["clock"] == "socket"


async def test_each_backend_owns_the_probe_its_connections_report_to() -> None:
    """No process-wide probe: two backends' connections are watched apart, and a wrapper shares its own."""
    a = create("openai", {"base_url": "http://127.0.0.1:9/v1", "model": "m"})
    b = create("openai", {"base_url": "http://127.0.0.1:9/v1", "model": "m"})
    assert isinstance(a.arrivals, ArrivalProbe) and a.arrivals is not b.arrivals  # type: ignore[attr-defined]
    async with ScriptedServer() as srv:
        sim = create("openai", {"base_url": srv.url, "model": "m"})
        await sim.start()
        try:
            events = [ev async for ev in sim.stream(REQ)]
            assert isinstance(events[-1], StreamEnd)
            assert sim.arrivals._watched or sim.arrivals.last_read_ns > 0  # type: ignore[attr-defined]
        finally:
            await sim.close()
