"""``infermeter summarize``: a run directory's summary, as a table or JSON."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console

from agent.cli.common import EXIT_OK, App, warn
from agent.core.manifest import Manifest
from agent.core.rundir import RunDir
from agent.core.scenario import Targets
from analysis.columns import read_columns
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
    with read_columns(ns.run_dir) as cols:
        for warning in cols.warnings:
            warn(err, warning)
        summary = summarize(cols, _targets(ns.run_dir, err), ns.run_dir if ns.run_dir.is_dir() else None)
        if ns.json:
            sys.stdout.write(json.dumps(summary.dump(), indent=2) + "\n")
        else:
            Console().print(render_summary(summary))
        if ns.html:
            from agent.cli.launching import write_html  # the run machinery, only when a page is asked for

            write_html(ns.run_dir, err, cols)
            err.print(f"wrote {ns.run_dir / 'report.html'}")
    return EXIT_OK


def _targets(run_dir: Path, err: Console) -> dict[str, Targets]:
    """What the run's scenarios aimed at, from its manifest (none, with a warning, where it is unreadable)."""
    targets: dict[str, Targets] = {}
    path = RunDir(run_dir).manifest
    try:
        manifest = Manifest.read(path)
        if manifest is not None:
            trace = manifest.trace is not None
            targets = {sc.name: Targets.of(sc.normalised, trace=trace) for sc in manifest.scenarios}
    except (OSError, ValueError) as e:  # a manifest that cannot be read, or targets that do not parse
        why = str(e).splitlines()[0].removeprefix(str(path)).lstrip(": ")
        warn(err, f"{path} unreadable ({why}); summarised without targets")
        targets = {}
    return targets
