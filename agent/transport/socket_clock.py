"""The socket-side clock: aiohttp's connection protocol, subclassed to stamp every read before parsing.

This is the one module that reads aiohttp's private internals (the response handler's ``_payload``,
the stream reader's buffer and cursor, the protocol's pause flags). Everything else reaches it through
four names: ``stamping(connector, probe)`` makes a connector's connections stamp, ``PushedBody`` turns a
response body into events as its connection receives it, ``ProbedBody`` lets the arrival probe look
before a request body is written, and ``clock()`` says which clock stamped, for the manifest.

``STAMPING`` is False on an aiohttp whose connection protocol changed shape: the reading task then
stamps what it reads. ``TESTED`` lists the aiohttp releases the clock was proven on; the test suite
fails on any other, so a new aiohttp is measured before it is trusted (``pyproject.toml`` bounds it).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Callable
from typing import Generic, Protocol, TypeVar

import aiohttp
from aiohttp.abc import AbstractStreamWriter
from aiohttp.base_protocol import BaseProtocol
from aiohttp.client_proto import ResponseHandler
from aiohttp.payload import BytesPayload
from aiohttp.streams import StreamReader

from agent.transport.probe import ArrivalProbe

__all__ = [
    "STAMPING",
    "TESTED",
    "BodyFeed",
    "ProbedBody",
    "PushedBody",
    "StampingHandler",
    "clock",
    "stamping",
]

#: aiohttp releases (major.minor) the socket clock is proven on: its tests and the client benchmark
TESTED = ("3.14",)


class BodyFeed(Protocol):
    """What a connection pushes one response body into, read by read."""

    def feed(self, data: bytes, t_ns: int) -> None:
        """The body's next bytes and when their socket read came; must not raise."""

    def finish(self, error: BaseException | None) -> None:
        """The body ended (``error`` None) or broke."""


class StampingHandler(ResponseHandler):
    """aiohttp's connection protocol, stamping every socket read the moment the loop hands it over.

    The stamp is taken in ``data_received``, before anything else happens to the bytes: the reads of
    one loop turn are all stamped first and parsed a moment later (``_release``), so parsing the
    first connection's bytes does not delay the stamp of the next. A response with a ``BodyFeed``
    attached (``attach``) gets its body pushed there, stamp and all, so the reading task need not wake
    for every read: a busy event loop (hundreds of streams, records being written) no longer shows up
    as arrival time, and each read costs less than waking a task for it. Until a feed is attached, the
    reads of the response are remembered as ``(body bytes so far, stamp)`` so the bytes that came with
    the head keep their time.

    A loop turn that runs long (a wave of requests ending and starting) reads no socket while it runs.
    The arrival probe (``agent.transport.probe``) looks at the watched sockets meanwhile and reports
    here (``arrived``) how far the unread bytes reach and when it saw them; the read that later brings
    those bytes stamps them with the probe's time instead of its own.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, probe: ArrivalProbe) -> None:
        super().__init__(loop)
        self.probe = probe
        self.stamped: StreamReader | None = None
        self.stamps: list[tuple[int, int]] = []
        self.body: BodyFeed | None = None
        self._held: list[tuple[bytes, int]] = []
        self._releasing = False
        self._raw = 0  # bytes the transport has handed over
        # (raw offset, perf ns) from arrival probes; rarely more than one waits (a list: 56 bytes, not a
        # deque's 600, on each of hundreds of connections)
        self._marks: list[tuple[int, int]] = []
        self._fd = -1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Also let the arrival probe watch the socket."""
        super().connection_made(transport)
        self._fd = self.probe.watch(transport, self)
        self.probe()  # a wave of new connections is a long loop turn

    def arrived(self, unread: int, t_ns: int) -> None:
        """An arrival probe saw ``unread`` bytes waiting at ``t_ns``."""
        upto = self._raw + unread
        if not self._marks or upto > self._marks[-1][0]:
            self._marks.append((upto, t_ns))

    @property
    def marked_ns(self) -> int:
        """When the newest probe mark still waiting for its read was made; 0 when none waits."""
        return self._marks[-1][1] if self._marks else 0

    def data_received(self, data: bytes) -> None:
        """Stamp the read and hold it; aiohttp parses it a moment later (``_release``).

        Bytes an arrival probe saw waiting keep the probe's earlier time.
        """
        t_ns = time.perf_counter_ns()
        if self._releasing or not data:  # aiohttp feeding itself, not a socket read
            self._receive(data, t_ns)
            return
        self.probe.last_read_ns = t_ns
        held = self._held
        if not held:
            self._loop.call_soon(self._release)
        start = self._raw
        self._raw = end = start + len(data)
        marks = self._marks
        if not marks:
            held.append((data, t_ns))
            return
        at = 0
        while marks and marks[0][0] <= end:
            upto, t_mark = marks.pop(0)
            if upto - start > at:
                held.append((data[at : upto - start], t_mark))
                at = upto - start
        if at < len(data):
            held.append((data[at:], marks[0][1] if marks else t_ns))

    def _release(self) -> None:
        """Parse what the reads since the last release brought, each piece with its own stamp."""
        held, self._held = self._held, []
        if self.transport is None:  # aiohttp closed the connection meanwhile: nobody wants the bytes
            return
        self._releasing = True
        probe = self.probe
        try:
            for data, t_ns in held:
                self._receive(data, t_ns)
                probe()
        finally:
            self._releasing = False

    def eof_received(self) -> None:
        """Parse what is held before the end of the stream."""
        self._release()
        super().eof_received()

    def _receive(self, data: bytes, t_ns: int) -> None:
        """Let aiohttp parse, then push the new body bytes or note how far the body came."""
        super().data_received(data)
        payload = self._payload
        if payload is None or not data:
            return
        if payload is not self.stamped:
            self.stamped, self.stamps, self.body = payload, [], None
        if self.body is not None:
            self._push(payload, t_ns)
        else:
            self.stamps.append((payload.total_bytes, t_ns))

    def resume_reading(self, resume_parser: bool = True) -> None:
        """Nothing to resume unless reading was paused.

        The body buffer calls this for every HTTP chunk it hands out; unpaused, aiohttp would re-enter
        ``data_received`` with no bytes and poke the transport each time, for nothing.
        """
        if self._reading_paused or self._buffer_paused:
            super().resume_reading(resume_parser)

    def connection_lost(self, exc: BaseException | None) -> None:
        """A body read to the close of the connection ends here; one cut short fails its feed."""
        if self._held:
            self._release()
        self.probe.unwatch(self._fd, self)
        payload = self.stamped
        super().connection_lost(exc)
        if self.body is not None and payload is not None:
            self._push(payload, time.perf_counter_ns())
            if self.body is not None:
                self.body.finish(payload.exception() or aiohttp.ClientPayloadError("connection lost"))
                self.body = None

    def attach(self, payload: StreamReader, body: BodyFeed) -> None:
        """Push ``payload`` (the body being received) into ``body``, starting with what is buffered."""
        assert payload is self.stamped, "attach to the body this connection is receiving"
        stamps, self.stamps = self.stamps, []
        self.body = body
        data = _buffered(payload)
        at = 0
        for upto, t_ns in stamps:
            if upto > at:
                body.feed(data[at:upto], t_ns)
                at = upto
        if at < len(data):
            body.feed(data[at:], time.perf_counter_ns())
        self._ended(payload)

    def detach(self, body: BodyFeed) -> None:
        """Stop pushing into ``body`` (the request ended or was abandoned)."""
        if self.body is body:
            self.body = None

    def _push(self, payload: StreamReader, t_ns: int) -> None:
        assert self.body is not None
        if data := _buffered(payload):
            self.body.feed(data, t_ns)
        self._ended(payload)

    def _ended(self, payload: StreamReader) -> None:
        body = self.body
        if body is None:
            return
        error = payload.exception()
        if error is not None or payload.is_eof():
            self.body = None
            body.finish(error)


def _buffered(payload: StreamReader) -> bytes:
    """Everything the body holds unread; nothing once it broke (``_ended`` hands on the error).

    What ``read_nowait()`` returns, taken in one join: aiohttp's own drain handles every HTTP chunk
    in the buffer by itself (a streamed body has one per event), which cost as much as the parsing.
    """
    if payload.exception() is not None:
        return b""
    buffer = payload._buffer
    if not buffer:
        return b""
    if payload._buffer_offset:  # someone read part of the first piece: let aiohttp finish it
        return payload.read_nowait()
    data = buffer[0] if len(buffer) == 1 else b"".join(buffer)
    buffer.clear()
    payload._size -= len(data)
    payload._cursor += len(data)
    splits = payload._http_chunk_splits
    if splits:  # the chunk ends now behind the cursor are of no more use (as aiohttp drops them)
        last = splits[-1]
        splits.clear()
        if last >= payload._cursor:
            splits.append(last)
    payload._protocol.resume_reading()
    return data


def _stamping_supported() -> bool:
    """Whether this aiohttp's connection protocol still has the shape the stamping handler relies on."""
    return (
        "_payload" in ResponseHandler.__init__.__code__.co_names
        and {"_reading_paused", "_buffer_paused"} <= set(getattr(BaseProtocol, "__slots__", ()))
        and {"_protocol", "_buffer", "_buffer_offset", "_size", "_cursor", "_http_chunk_splits"}
        <= set(getattr(StreamReader, "__slots__", ()))
    )


#: False on an aiohttp whose connection protocol changed shape: tasks then stamp what they read.
STAMPING = _stamping_supported()


def stamping(connector: aiohttp.TCPConnector, probe: ArrivalProbe) -> None:
    """Make ``connector``'s connections stamp every socket read and report to ``probe`` (where allowed)."""
    if STAMPING and isinstance(getattr(connector, "_factory", None), functools.partial):
        loop = asyncio.get_running_loop()
        connector._factory = functools.partial(StampingHandler, loop=loop, probe=probe)  # type: ignore[assignment]


def clock() -> dict[str, str]:
    """Which clock stamps this process' HTTP streams, for every HTTP backend's manifest facts.

    ``socket``: each read is stamped in the connection's ``data_received``, before parsing; ``task``: the
    reading task stamps what it reads, so a busy event loop adds its delay to TTFT and ITL.
    """
    return {"clock": "socket" if STAMPING else "task", "aiohttp": aiohttp.__version__}


T = TypeVar("T")


class PushedBody(Generic[T]):
    """One response body turned into events by ``parse`` as its connection receives it.

    ``parse(data, t_ns)`` runs inside the connection's read callback and returns the events made from
    those bytes, stamped ``t_ns``. The reading task wakes twice: at the first event and at the end of the
    body (``events``). ``last_ns`` is the stamp of the read that brought the body's last bytes. Where
    the connection cannot push (``STAMPING`` False), the task reads and stamps the body itself.
    """

    __slots__ = ("_done", "_error", "_events", "_first", "_waiter", "last_ns", "parse")

    def __init__(self, parse: Callable[[bytes, int], list[T]]) -> None:
        self.parse = parse
        self.last_ns = 0
        self._events: list[T] = []
        self._first = True
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    def feed(self, data: bytes, t_ns: int) -> None:
        """Parse the next bytes (in the connection's read callback); a parse error ends the body."""
        if self._done:
            return
        self.last_ns = t_ns
        try:
            events = self.parse(data, t_ns)
        except Exception as e:  # noqa: BLE001 - handed to the reading task, never into aiohttp
            self.finish(e)
            return
        if events:
            self._events += events
            if self._first:
                self._first = False
                self._wake()

    def finish(self, error: BaseException | None) -> None:
        """The body ended, or broke with ``error``."""
        if not self._done:
            self._done, self._error = True, error
            self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def events(self, resp: aiohttp.ClientResponse) -> AsyncIterator[T]:
        """The body's events: those up to the first, then the rest at the end; raises what broke it."""
        # The connection that received this body; a body complete before the task got its response has
        # already been handed back to the pool, and one the pool already gave to another request is
        # stamping that request's body instead: then the task reads and stamps what is left.
        proto = getattr(resp.content, "_protocol", None)
        if not isinstance(proto, StampingHandler) or proto.stamped is not resp.content:
            async for data in resp.content.iter_any():
                self.last_ns = time.perf_counter_ns()
                for event in self.parse(data, self.last_ns):
                    yield event
            return
        proto.attach(resp.content, self)
        try:
            while True:
                if not self._events and not self._done:
                    self._waiter = asyncio.get_running_loop().create_future()
                    await self._waiter
                    proto.probe()
                events, self._events = self._events, []
                for event in events:
                    yield event
                if self._done and not self._events:
                    break
        finally:
            proto.detach(self)
        if self._error is not None:
            raise self._error


class ProbedBody(BytesPayload):
    """A request body that lets the arrival probe look before it is written.

    aiohttp writes each body in a task of its own; a wave of new requests runs hundreds of those in
    one loop turn, and this is the one step of theirs that is ours.
    """

    def __init__(self, value: bytes, probe: ArrivalProbe) -> None:
        super().__init__(value)
        self._probe = probe

    async def write_with_length(self, writer: AbstractStreamWriter, content_length: int | None) -> None:
        """Probe, then write as aiohttp does."""
        self._probe()
        await super().write_with_length(writer, content_length)
