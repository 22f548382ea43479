"""Incremental splitter for newline-delimited JSON bodies (Ollama's streaming format)."""

from __future__ import annotations

from agent.transport.framing import MAX_EVENT_BYTES, Held

__all__ = ["LineSplitter"]


class LineSplitter:
    """Feed raw bytes as they arrive; get back the complete, non-blank lines they finished.

    Lines end with LF (a CR before it is dropped). Bytes may split anywhere, even inside a UTF-8
    character, because a line is handed out only once its LF has arrived.
    """

    __slots__ = ("_held",)

    def __init__(self, max_line_bytes: int = MAX_EVENT_BYTES) -> None:
        self._held = Held(max_line_bytes)

    def feed(self, chunk: bytes) -> list[bytes]:
        """Consume ``chunk`` and return every line it completed, in order, without terminators.

        A line longer than ``max_line_bytes`` is a ``RequestFailedError`` (``invalid_response``).
        """
        buf = self._held.add(chunk)
        if buf is None:
            return []
        lines = buf.split(b"\n")
        self._held.keep(lines.pop())
        return [s for raw in lines if (s := raw.rstrip(b"\r").strip())]

    def close(self) -> list[bytes]:
        """End of body: a last line without its LF still counts (servers may omit the final newline)."""
        raw = self._held.take().strip()
        return [raw] if raw else []
