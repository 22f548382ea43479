"""Arrival probes: while the event loop is busy, ask the kernel which connections got bytes, and when.

An event loop reads its sockets only between turns. A turn that runs hundreds of request ends and starts
(a closed loop's whole wave changing over) can last tens of milliseconds, and bytes that arrive meanwhile
would be stamped when the turn ends. The probe, called between steps of work, asks
an edge-triggered epoll set which watched connections received bytes since the last probe, asks each
of those how many bytes it holds unread (``FIONREAD``), and tells the connection: everything up to
that offset had arrived by now. The connection stamps those bytes with that time when it reads them.

Probes are called where a long turn spends its time: by the runner at each request start and end and
after each record it writes, and by the HTTP connections after each read they parse, on each new
connection, before each request body is written and when a response head or first event arrives.

A probe costs one ``epoll_wait`` and one ``ioctl`` per connection with new bytes, so it runs only when
no socket read has happened for ``PROBE_AFTER_NS`` (the loop is in a long turn) and at most once per
``PROBE_EVERY_NS``. A connection it reported is counted again, before the read that brings those
bytes, only ``MARK_AGAIN_NS`` later: a loop saturated by streams that never pause pays at most one
``ioctl`` and one extra parse step per connection per millisecond of a long turn, and a byte that
arrives right behind a reported one is stamped at most about that much late.

Where epoll is missing (not Linux) probes do nothing. Connections whose bytes pass through TLS are
never watched: the kernel's count is of ciphertext, which does not map onto the plaintext the
connection reads.
"""

from __future__ import annotations

import array
import contextlib
import time
from typing import Any, Protocol

__all__ = [
    "MARK_AGAIN_NS",
    "PROBE_AFTER_NS",
    "PROBE_EVERY_NS",
    "SUPPORTED",
    "ArrivalProbe",
    "Watched",
]

try:  # Linux
    import fcntl
    import select
    import termios

    _EPOLL = select.EPOLLIN | select.EPOLLET
    _FIONREAD = termios.FIONREAD
    SUPPORTED = hasattr(select, "epoll")
except (ImportError, AttributeError):  # pragma: no cover - other systems
    SUPPORTED = False

#: A probe looks only when no socket has been read for this long (the loop is in a long turn)...
PROBE_AFTER_NS = 50_000
#: ...and at most this often.
PROBE_EVERY_NS = 30_000
#: A connection already reported is counted again only this long after, if its read has not come.
MARK_AGAIN_NS = 1_000_000


class Watched(Protocol):
    """A connection the probe reports to."""

    @property
    def marked_ns(self) -> int:
        """When the report still waiting for its read was made (``perf_counter_ns``); 0 when none waits."""

    def arrived(self, unread: int, t_ns: int) -> None:
        """``unread`` bytes beyond those already read had arrived by ``t_ns`` (``perf_counter_ns``)."""


class ArrivalProbe:
    """One backend's watched connections, and the probe itself (call it to probe).

    The backend that opens the connections owns it (``arrivals``); the runner that drives the backend
    and the writer of its records call it between their steps of work.
    """

    def __init__(self) -> None:
        self._epoll: Any = None
        self._watched: dict[int, Watched] = {}
        self._count = array.array("i", [0])
        #: ``perf_counter_ns()`` of the latest socket read; connections set it as they read
        self.last_read_ns = 0
        self._last_probe_ns = 0

    def watch(self, transport: Any, conn: Watched) -> int:
        """Watch the plain TCP socket under ``transport`` for ``conn``; the fd, or -1 when not watched."""
        if not SUPPORTED or transport.get_extra_info("sslcontext") is not None:
            return -1
        sock = transport.get_extra_info("socket")
        fd = sock.fileno() if sock is not None else -1
        if fd < 0:
            return -1
        if self._epoll is None:
            self._epoll = select.epoll()
        try:
            self._epoll.register(fd, _EPOLL)
        except FileExistsError:
            self._epoll.modify(fd, _EPOLL)
        except OSError:
            return -1
        self._watched[fd] = conn
        return fd

    def unwatch(self, fd: int, conn: Watched) -> None:
        """Stop watching ``fd`` if it is still ``conn``'s (the number may already serve a new socket)."""
        if fd >= 0 and self._watched.get(fd) is conn:
            del self._watched[fd]
            with contextlib.suppress(OSError, ValueError):
                self._epoll.unregister(fd)

    def __call__(self) -> None:
        """Probe, if the loop has gone long enough without reading a socket."""
        if not self._watched:
            return
        now = time.perf_counter_ns()
        if now - self.last_read_ns < PROBE_AFTER_NS or now - self._last_probe_ns < PROBE_EVERY_NS:
            return
        self._last_probe_ns = now
        try:
            ready = self._epoll.poll(0)
        except OSError:
            return
        if not ready:
            return
        found: list[tuple[Watched, int]] = []
        count = self._count
        for fd, _ in ready:
            conn = self._watched.get(fd)
            if conn is None or now - conn.marked_ns < MARK_AGAIN_NS:
                continue
            try:
                fcntl.ioctl(fd, _FIONREAD, count, True)
            except OSError:
                continue
            if count[0] > 0:
                found.append((conn, count[0]))
        t_ns = time.perf_counter_ns()  # after every count: the bytes counted had all arrived by now
        for conn, unread in found:
            conn.arrived(unread, t_ns)
