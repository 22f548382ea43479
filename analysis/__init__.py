"""Offline analysis: reads run directories (JSONL), never the runtime."""

from __future__ import annotations

__all__: list[str] = []
