"""The app: the ``infermeter`` command line, one module per command, and the one place that wires the rest."""

from __future__ import annotations

from agent.cli.app import main

__all__ = ["main"]
