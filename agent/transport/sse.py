"""Incremental parser for ``text/event-stream`` bodies: bytes in, complete events out."""

from __future__ import annotations

from typing import NamedTuple

from agent.transport.framing import MAX_EVENT_BYTES, Held

__all__ = ["SSEEvent", "SSEParser"]


class SSEEvent(NamedTuple):
    """One dispatched event: its type (``message`` unless the server named one) and its data."""

    event: str
    data: str


class SSEParser:
    """Feed raw bytes as they arrive; get back the events completed by them.

    Follows the WHATWG event-stream rules that matter to LLM servers: LF or CRLF line ends, ``data:``
    lines joined with newlines, one optional space after the colon, comment lines (``:`` keep-alives)
    ignored, an event dispatched at a blank line. Bytes may be split anywhere, including inside a
    multi-byte UTF-8 character, because lines are decoded only once complete.
    """

    __slots__ = ("_data", "_data_bytes", "_event", "_held")

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._held = Held(max_event_bytes)
        self._data: list[str] = []
        self._data_bytes = 0
        self._event = ""

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Consume ``chunk`` and return every event it completed, in order.

        An event larger than ``max_event_bytes`` is a ``RequestFailedError`` (``invalid_response``).
        """
        buf = self._held.add(chunk)
        return [] if buf is None else self._lines(buf)

    def _lines(self, buf: bytes) -> list[SSEEvent]:
        lines = buf.split(b"\n")
        self._held.keep(lines.pop())
        out: list[SSEEvent] = []
        for raw in lines:
            self._line(raw[:-1] if raw.endswith(b"\r") else raw, out)
        return out

    @property
    def busy(self) -> bool:
        """True while a line or an event is half-read."""
        return bool(self._held or self._data or self._event)

    def feed_payloads(self, chunk: bytes) -> list[bytes]:
        """Like ``feed`` but returns each event's data as bytes, splitting whole events in one pass.

        The common case (LF line ends, one ``data:`` line per event) never decodes or walks lines;
        anything else (CRLF, comments, ``event:`` or multi-line data) goes through the full rules.
        """
        buf = self._held.add(chunk)
        if buf is None:
            return []
        if self._data or self._event or b"\r" in buf:
            return [e.data.encode() for e in self._lines(buf)]
        blocks = buf.split(b"\n\n")
        rest = blocks.pop()
        out: list[bytes] = []
        for block in blocks:
            if block.startswith(b"data:") and b"\n" not in block:
                out.append(block[6:] if block[5:6] == b" " else block[5:])
            elif block:
                out.extend(e.data.encode() for e in self._lines(block + b"\n\n"))
        self._held.keep(rest)
        return out

    def close(self) -> list[SSEEvent]:
        """End of body: flush a last line and event that lacked their terminators (lenient)."""
        out: list[SSEEvent] = []
        raw = self._held.take()
        if raw:
            self._line(raw[:-1] if raw.endswith(b"\r") else raw, out)
        self._line(b"", out)
        return out

    def _line(self, raw: bytes, out: list[SSEEvent]) -> None:
        if not raw:
            if self._data:
                out.append(SSEEvent(self._event or "message", "\n".join(self._data)))
            self._data = []
            self._data_bytes = 0
            self._event = ""
            return
        if raw[0] == 0x3A:  # ':' comment or keep-alive
            return
        name, sep, value = raw.partition(b":")
        if sep and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data_bytes += len(value)
            self._held.check(self._data_bytes)
            self._data.append(value.decode("utf-8", errors="replace"))
        elif name == b"event":
            self._event = value.decode("utf-8", errors="replace")
