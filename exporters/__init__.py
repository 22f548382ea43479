"""Exporters translate records and snapshots into sinks: JSONL files, Prometheus."""

from __future__ import annotations

__all__: list[str] = []
