"""``infermeter summarize``: a run directory's summary, as a table or JSON."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console

from agent.cli.common import EXIT_OK, App, warn
from agent.cli.launching import write_html
from agent.core.manifest import Manifest
from agent.core.rundir import RunDir
from agent.core.scenario import Targets
from analysis.records import load_records
from analysis.render.summary import render_summary
from analysis.summary import summarize

NAME = "summarize"
HELP = "summarise a run directory"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The run directory, and whether to print JSON."""
    p.add_argument("run_dir", type=Path)
    p.add_argument("--json", action="store_true", help="print summary JSON instead of the table")
    p.add_argument("--html", action="store_true", help="write the run's report.html again")


def run(ns: argparse.Namespace, app: App) -> int:
    """The run's summary from its records and manifest, as a table or JSON."""
    err = app.err
    loaded = load_records(ns.run_dir)
    for warning in loaded.warnings:
        warn(err, warning)
    targets: dict[str, Targets] = {}
    path = RunDir(ns.run_dir).manifest
    try:
        manifest = Manifest.read(path)
        if manifest is not None:
            trace = manifest.trace is not None
            targets = {sc.name: Targets.of(sc.normalised, trace=trace) for sc in manifest.scenarios}
    except (OSError, ValueError) as e:  # a manifest that cannot be read, or targets that do not parse
        why = str(e).splitlines()[0].removeprefix(str(path)).lstrip(": ")
        warn(err, f"{path} unreadable ({why}); summarised without targets")
        targets = {}
    summary = summarize(loaded.records, targets, ns.run_dir if ns.run_dir.is_dir() else None)
    if ns.json:
        sys.stdout.write(json.dumps(summary.dump(), indent=2) + "\n")
    else:
        Console().print(render_summary(summary))
    if ns.html:
        write_html(ns.run_dir, err)
        err.print(f"wrote {ns.run_dir / 'report.html'}")
    return EXIT_OK
