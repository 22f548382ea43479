"""Arrival probes: bytes that arrive while the loop is in a long turn keep the time they were seen."""

from __future__ import annotations

import asyncio
import itertools
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from agent.backends import create
from agent.core.record import Chunk, GenerationRequest, StreamEvent
from agent.transport import probe, socket_clock
from tests.sse_server import ScriptedServer

pytestmark = pytest.mark.skipif(not probe.SUPPORTED, reason="arrival probes need epoll (Linux)")


class FakeTransport:
    def __init__(self, sock: socket.socket | None, tls: bool = False) -> None:
        self.extra = {"socket": sock, "sslcontext": object() if tls else None}

    def get_extra_info(self, name: str) -> Any:
        return self.extra.get(name)


class Seen:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []
        self.marked_ns = 0

    def arrived(self, unread: int, t_ns: int) -> None:
        self.calls.append((unread, t_ns))
        self.marked_ns = t_ns


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def busy(p: probe.ArrivalProbe) -> None:
    """Pretend the loop has read nothing for a while and was not probed lately."""
    p.last_read_ns = p._last_probe_ns = time.perf_counter_ns() - 10 * probe.PROBE_AFTER_NS


def test_a_busy_probe_reports_the_unread_bytes_and_when_it_saw_them(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    p, seen = probe.ArrivalProbe(), Seen()
    ours, theirs = pair
    assert p.watch(FakeTransport(ours), seen) == ours.fileno()
    theirs.sendall(b"x" * 100)
    busy(p)
    before = time.perf_counter_ns()
    p()
    assert len(seen.calls) == 1
    unread, t_ns = seen.calls[0]
    assert unread == 100 and before <= t_ns <= time.perf_counter_ns()
    # more bytes before the read that brings the first: not reported, the first report stands
    theirs.sendall(b"y" * 20)
    busy(p)
    p()
    assert len(seen.calls) == 1
    # a while later, still unread: counted again (the count is of everything unread)
    seen.marked_ns -= probe.MARK_AGAIN_NS
    theirs.sendall(b"z")
    busy(p)
    p()
    assert len(seen.calls) == 2 and seen.calls[-1][0] == 121
    # nothing new arrived: the edge-triggered set stays quiet
    busy(p)
    p()
    assert len(seen.calls) == 2


def test_the_probe_stays_out_of_the_way_of_a_loop_that_reads(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    p, seen = probe.ArrivalProbe(), Seen()
    ours, theirs = pair
    p.watch(FakeTransport(ours), seen)
    theirs.sendall(b"x")
    p.last_read_ns = time.perf_counter_ns()  # a socket was just read: the loop is not stuck
    p()
    assert seen.calls == []
    busy(p)
    p._last_probe_ns = time.perf_counter_ns()  # probed a moment ago
    p()
    assert seen.calls == []


def test_tls_and_socketless_transports_are_not_watched(pair: tuple[socket.socket, socket.socket]) -> None:
    p, seen = probe.ArrivalProbe(), Seen()
    ours, theirs = pair
    assert p.watch(FakeTransport(ours, tls=True), seen) == -1
    assert p.watch(FakeTransport(None), seen) == -1
    theirs.sendall(b"x")
    busy(p)
    p()
    assert seen.calls == []


def test_unwatch_leaves_a_reused_descriptor_to_its_new_owner(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    p, old, new = probe.ArrivalProbe(), Seen(), Seen()
    ours, theirs = pair
    fd = p.watch(FakeTransport(ours), old)
    assert p.watch(FakeTransport(ours), new) == fd  # the number now serves another connection
    p.unwatch(fd, old)
    theirs.sendall(b"x")
    busy(p)
    p()
    assert old.calls == [] and new.calls and new.calls[0][0] == 1
    p.unwatch(fd, new)
    theirs.sendall(b"y")
    busy(p)
    p()
    assert len(new.calls) == 1


# ---- the connection's side: marks split a read into pieces stamped at the probe's time ----------------


class Pieces(socket_clock.StampingHandler):
    """A stamping connection that records the pieces it would hand to aiohttp."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop, probe.ArrivalProbe())
        self.pieces: list[tuple[bytes, int]] = []
        self.transport = FakeTransport(None)  # type: ignore[assignment]

    def _receive(self, data: bytes, t_ns: int) -> None:
        self.pieces.append((data, t_ns))


async def settle() -> None:
    await asyncio.sleep(0)


async def test_bytes_a_probe_saw_keep_its_time_and_the_rest_keep_the_read_time() -> None:
    conn = Pieces(asyncio.get_running_loop())
    conn.arrived(4, 1_000)
    before = time.perf_counter_ns()
    conn.data_received(b"abcdefgh")
    assert conn.pieces == []  # stamped now, parsed a moment later
    await settle()
    assert [d for d, _ in conn.pieces] == [b"abcd", b"efgh"]
    assert conn.pieces[0][1] == 1_000 and conn.pieces[1][1] >= before


async def test_a_mark_beyond_the_read_stamps_the_whole_read_and_waits_for_the_next() -> None:
    conn = Pieces(asyncio.get_running_loop())
    conn.arrived(10, 1_000)
    conn.arrived(10, 2_000)  # nothing beyond the pending mark: nothing new
    assert list(conn._marks) == [(10, 1_000)]
    conn.data_received(b"abcd")
    conn.data_received(b"efghijkl")
    await settle()
    assert conn.pieces[:2] == [(b"abcd", 1_000), (b"efghij", 1_000)]
    assert conn.pieces[2][0] == b"kl" and conn.pieces[2][1] > 1_000
    assert not conn._marks


async def test_a_reported_connection_is_counted_again_after_its_read_or_a_while(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    p = probe.ArrivalProbe()
    conn = Pieces(asyncio.get_running_loop())
    ours, theirs = pair
    p.watch(FakeTransport(ours), conn)
    theirs.sendall(b"abcd")
    busy(p)
    p()
    assert conn.marked_ns and len(conn._marks) == 1
    theirs.sendall(b"efgh")  # right behind: these wait
    busy(p)
    p()
    assert len(conn._marks) == 1
    upto, t_mark = conn._marks[-1]
    conn._marks[-1] = (upto, t_mark - probe.MARK_AGAIN_NS)  # a long turn goes on
    theirs.sendall(b"ijkl")
    busy(p)
    p()
    assert [upto for upto, _ in conn._marks] == [4, 12]
    conn.data_received(ours.recv(100))
    assert not conn._marks and conn.marked_ns == 0
    await settle()
    assert [d for d, _ in conn.pieces] == [b"abcd", b"efghijkl"]
    assert conn.pieces[0][1] < conn.pieces[1][1]
    theirs.sendall(b"mnop")  # after the read, reported at once
    busy(p)
    p()
    assert conn._marks[0][0] == 16


async def test_held_bytes_are_parsed_before_the_connection_is_lost() -> None:
    conn = Pieces(asyncio.get_running_loop())
    conn.data_received(b"tail of the body")
    conn.connection_lost(None)
    assert [d for d, _ in conn.pieces] == [b"tail of the body"]
    await settle()
    assert len(conn.pieces) == 1  # the scheduled release finds nothing left


# ---- end to end: a reader whose loop is stuck in one long turn ------------------------------------------

GAP_S = 0.03
REQ = GenerationRequest(request_id="r1", prompt="hi", max_tokens=3, endpoint="chat")


class ThreadedServer:
    """The scripted server on a loop of its own, so it keeps writing while the test's loop is stuck."""

    def __enter__(self) -> str:
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._srv = ScriptedServer()
        self._srv.mode, self._srv.gap_s, self._srv.keep_alive = "paced", GAP_S, False

        async def serve() -> None:
            async with self._srv:
                self._stop = asyncio.Event()
                ready.set()
                await self._stop.wait()

        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(serve(),), daemon=True)
        self._thread.start()
        assert ready.wait(10)
        return self._srv.url

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self._loop.close()


async def test_events_arriving_during_a_long_loop_turn_keep_their_spacing() -> None:
    with ThreadedServer() as url:
        backend = create("openai", {"base_url": url, "model": "m"})
        await backend.start()
        events: list[StreamEvent] = []
        try:
            async for ev in backend.stream(REQ):
                if isinstance(ev, Chunk) and not any(isinstance(e, Chunk) for e in events):
                    # one loop turn of eight gaps, with the probe called between steps of work, as
                    # the runner does between request starts, ends and records
                    until = time.perf_counter_ns() + int(GAP_S * 8e9)
                    while time.perf_counter_ns() < until:
                        backend.arrivals()  # type: ignore[attr-defined]
                        time.sleep(0.0002)  # noqa: ASYNC251 - the point: the loop is stuck
                events.append(ev)
        finally:
            await backend.close()
    chunks = [e for e in events if isinstance(e, Chunk)]
    assert "".join(c.text for c in chunks) == "Hello there friend"
    assert all(c.count == 1 for c in chunks)  # the probes split the one read that brought them
    gaps = [(b.t_ns - a.t_ns) / 1e6 for a, b in itertools.pairwise(chunks)]
    # all read when the turn ended; stamped when the probe saw them, a gap apart
    assert all(GAP_S * 1000 * 0.5 < g < GAP_S * 1000 * 1.5 for g in gaps), gaps
