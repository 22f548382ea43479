"""Bytes of a stream frame (an SSE event, an NDJSON line) that has not ended yet, held in linear time.

A server may send one frame over many reads, and a hostile or broken one may never end it. Joining
the held bytes on every read would cost time quadratic in the frame's size; ``Held`` keeps the reads
as pieces until one brings a line end, and refuses a frame larger than its cap with
``invalid_response``, so one bad response costs bounded memory and linear time.
"""

from __future__ import annotations

from agent.core.errors import RequestFailedError

__all__ = ["MAX_EVENT_BYTES", "Held"]

#: Largest stream frame (one SSE event or NDJSON line) a response may send; a backend argument
#: (``max_event_bytes``) changes it.
MAX_EVENT_BYTES = 4 << 20


class Held:
    """An unfinished frame's bytes as pieces; ``add`` hands back the whole once a line end arrives."""

    __slots__ = ("_parts", "_size", "cap")

    def __init__(self, cap: int = MAX_EVENT_BYTES) -> None:
        self.cap = cap
        self._parts: list[bytes] = []
        self._size = 0

    def __bool__(self) -> bool:
        return bool(self._parts)

    def add(self, data: bytes) -> bytes | None:
        """What to parse now: ``data`` joined to what is held, once a read brings a line end.

        None while no line end has come (``data`` is held too); raises once the frame passes the cap.
        The caller parses the result and gives its unfinished tail back with ``keep``.
        """
        if not self._parts:
            return data
        if b"\n" not in data:
            self._parts.append(data)
            self._size += len(data)
            self.check(self._size)
            return None
        self._parts.append(data)
        whole = b"".join(self._parts)
        self._parts, self._size = [], 0
        return whole

    def keep(self, rest: bytes) -> None:
        """Hold ``rest``, the unfinished tail of what was just parsed."""
        self.check(len(rest))
        self._parts = [rest] if rest else []
        self._size = len(rest)

    def take(self) -> bytes:
        """Everything held, emptied (the end of the body)."""
        whole = b"".join(self._parts)
        self._parts, self._size = [], 0
        return whole

    def check(self, size: int) -> None:
        """Refuse a frame that has grown past the cap."""
        if size > self.cap:
            raise RequestFailedError(
                "invalid_response",
                f"a stream frame grew past {self.cap} bytes without ending (max_event_bytes)",
            )
