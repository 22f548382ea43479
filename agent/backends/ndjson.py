"""Incremental splitter for newline-delimited JSON bodies (Ollama's streaming format)."""

from __future__ import annotations

__all__ = ["LineSplitter"]


class LineSplitter:
    """Feed raw bytes as they arrive; get back the complete, non-blank lines they finished.

    Lines end with LF (a CR before it is dropped). Bytes may split anywhere, even inside a UTF-8
    character, because a line is handed out only once its LF has arrived.
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        """Consume ``chunk`` and return every line it completed, in order, without terminators."""
        buf = self._buf + chunk if self._buf else chunk
        lines = buf.split(b"\n")
        self._buf = lines.pop()
        return [s for raw in lines if (s := raw.rstrip(b"\r").strip())]

    def close(self) -> list[bytes]:
        """End of body: a last line without its LF still counts (servers may omit the final newline)."""
        raw, self._buf = self._buf.strip(), b""
        return [raw] if raw else []
