"""``infermeter study STUDY.yaml --out DIR``: variants × scenarios × repetitions, then the decision."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from agent.backends import create
from agent.cli.common import EXIT_FAILED, EXIT_OK, App
from agent.cli.launching import backend_args
from agent.core.files import write_atomic
from agent.core.manifest import write_json_atomic
from agent.core.rundir import StudyDir
from agent.core.scenario import load_scenario, resolve_scenario
from agent.core.study import Cell, Study, load_study
from agent.run.study import StudyOutcome, StudyRunner

NAME = "study"
HELP = "run a study (variants × scenarios × repetitions), resumable; report which variant and why"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The study file, where its cells and report go, and how to treat an earlier start."""
    p.add_argument("study", type=Path, help="study YAML (see scenarios/studies/)")
    p.add_argument("--out", type=Path, help="study folder (default runs/study-<name>); rerun to resume")
    p.add_argument(
        "--allow-changed",
        action="store_true",
        help="resume although the study file changed: completed cells that still belong to it are kept",
    )
    p.add_argument(
        "--analyze-only", action="store_true", help="no new cells: analyse and report what is there"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-semscore", action="store_true", help="grade quality without SemScore")
    p.add_argument(
        "--semscore-model", help="sentence-transformers model path or id (default all-MiniLM-L6-v2)"
    )


def _check(study: Study, app: App) -> None:
    """Every scenario and every variant's backend arguments validated before the first cell runs."""
    for name in study.scenarios:
        load_scenario(resolve_scenario(str(study.resolve(name))))
    for v in study.variants.values():
        args = [f"{k}={json.dumps(val)}" for k, val in v.args.items()]
        model_path = study.resolve(v.model_path) if v.model_path and v.serve is None else None
        ns = argparse.Namespace(
            backend=v.backend,
            base_url=v.base_url,
            model=v.model,
            model_path=model_path,
            compile=v.compile,
            backend_arg=args,
        )
        create(v.backend, backend_args(ns, app.settings, Path("."), 1))


def _run_cells(study: Study, out: Path, ns: argparse.Namespace, app: App) -> StudyOutcome:
    """The cells with a progress bar: cells done, the cell under way, time left."""
    runner = StudyRunner(study, out, allow_changed=ns.allow_changed)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=app.err, disable=ns.no_progress, transient=True) as progress:
        task = progress.add_task(study.name, total=len(study.cells()))

        def on_cell(done: int, total: int, cell: Cell, status: str) -> None:
            label = f"{cell.name} {status}" if status in ("running", "kept") else f"{cell.name}: {status}"
            progress.update(task, completed=done, total=total, description=label)

        return runner.run(on_cell)


def _semscorer(ns: argparse.Namespace, app: App) -> Any:
    """The SemScore model for grading quality, or None (disabled, or not loadable: said once)."""
    if ns.no_semscore:
        return None
    from analysis.scorers import load_semscorer

    semscorer, why = load_semscorer(ns.semscore_model)
    if why is not None:
        app.err.print(f"[yellow]SemScore unavailable[/yellow] ({why}); quality is graded without it")
    return semscorer


def run(ns: argparse.Namespace, app: App) -> int:
    """Run the cells not yet completed, then analyse every completed one and write the report."""
    from analysis.render.html import study_html
    from analysis.render.study import study_console, study_markdown
    from analysis.study import analyze_study

    study = load_study(ns.study)
    out: Path = ns.out or Path("runs") / f"study-{study.name}"
    outcome = StudyOutcome()
    if not ns.analyze_only:
        _check(study, app)
        try:
            outcome = _run_cells(study, out, ns, app)
        except KeyboardInterrupt:  # between cells: nothing in flight
            outcome.interrupted = True
    result = analyze_study(study, out, semscorer=_semscorer(ns, app))
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(StudyDir(out).results, result.dump())
    write_atomic(StudyDir(out).report_md, study_markdown(result))
    write_atomic(StudyDir(out).report_html, study_html(result))
    Console().print(study_console(result))
    done = sum(c.status == "completed" for c in result.cells)
    app.err.print(
        f"{done} of {len(result.cells)} cells completed ({len(outcome.ran)} now, {len(outcome.kept)} kept); "
        f"report: {out / 'report.md'} and report.html, results: {out / 'study.json'}"
    )
    if outcome.interrupted:
        app.err.print("[yellow]interrupted[/yellow]: run the same command again to resume")
        return 130
    if outcome.failed:
        app.err.print(
            f"[red]{len(outcome.failed)} cell(s) failed[/red] (logs in {out / 'cells'}): rerun to retry"
        )
        return EXIT_FAILED
    return EXIT_OK
