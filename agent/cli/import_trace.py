"""``infermeter import-trace``: an Azure CSV or Mooncake JSONL trace converted to ours."""

from __future__ import annotations

import argparse
from pathlib import Path

from agent.cli.common import EXIT_OK, App
from agent.core.trace import load_trace, write_trace

NAME = "import-trace"
HELP = "convert an Azure CSV or Mooncake JSONL trace to ours"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The source trace, the output file and the source format."""
    p.add_argument("source", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--format", choices=["auto", "azure", "mooncake", "jsonl"], default="auto")


def run(ns: argparse.Namespace, app: App) -> int:
    """Convert a trace to our JSONL format."""
    items = load_trace(ns.source, ns.format)
    write_trace(items, ns.output)
    app.err.print(f"{len(items)} requests over {items[-1].timestamp:.1f} s written to {ns.output}")
    return EXIT_OK
