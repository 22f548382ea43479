"""Incremental parser for ``text/event-stream`` bodies: bytes in, complete events out."""

from __future__ import annotations

from typing import NamedTuple

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

    __slots__ = ("_buf", "_data", "_event")

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[str] = []
        self._event = ""

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Consume ``chunk`` and return every event it completed, in order."""
        buf = self._buf + chunk if self._buf else chunk
        lines = buf.split(b"\n")
        self._buf = lines.pop()
        out: list[SSEEvent] = []
        for raw in lines:
            self._line(raw[:-1] if raw.endswith(b"\r") else raw, out)
        return out

    @property
    def busy(self) -> bool:
        """True while a line or an event is half-read."""
        return bool(self._buf or self._data or self._event)

    def feed_payloads(self, chunk: bytes) -> list[bytes]:
        """Like ``feed`` but returns each event's data as bytes, splitting whole events in one pass.

        The common case (LF line ends, one ``data:`` line per event) never decodes or walks lines;
        anything else (CRLF, comments, ``event:`` or multi-line data) goes through the full rules.
        """
        buf = self._buf + chunk if self._buf else chunk
        if self._data or self._event or b"\r" in buf:
            self._buf = b""
            return [e.data.encode() for e in self.feed(buf)]
        blocks = buf.split(b"\n\n")
        rest = blocks.pop()
        self._buf = b""
        out: list[bytes] = []
        for block in blocks:
            if block.startswith(b"data:") and b"\n" not in block:
                out.append(block[6:] if block[5:6] == b" " else block[5:])
            elif block:
                out.extend(e.data.encode() for e in self.feed(block + b"\n\n"))
        self._buf = rest
        return out

    def close(self) -> list[SSEEvent]:
        """End of body: flush a last line and event that lacked their terminators (lenient)."""
        out: list[SSEEvent] = []
        if self._buf:
            raw, self._buf = self._buf, b""
            self._line(raw[:-1] if raw.endswith(b"\r") else raw, out)
        self._line(b"", out)
        return out

    def _line(self, raw: bytes, out: list[SSEEvent]) -> None:
        if not raw:
            if self._data:
                out.append(SSEEvent(self._event or "message", "\n".join(self._data)))
            self._data = []
            self._event = ""
            return
        if raw[0] == 0x3A:  # ':' comment or keep-alive
            return
        name, sep, value = raw.partition(b":")
        if sep and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value.decode("utf-8", errors="replace"))
        elif name == b"event":
            self._event = value.decode("utf-8", errors="replace")
