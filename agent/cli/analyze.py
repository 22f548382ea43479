"""The ``infermeter analyze`` command: read runs, analyze, write the report, publish, print verdicts."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from agent.cli.common import EXIT_OK, EXIT_REGRESSION, App, warn
from agent.core.errors import ConfigError
from agent.core.files import write_atomic
from agent.core.rundir import AnalysisDir

if TYPE_CHECKING:
    from analysis.results import AnalysisResult
    from analysis.runs import Run

NAME = "analyze"
HELP = "compare runs: latency/throughput verdicts with CIs, quality and drift, cost; write a report"
DESCRIPTION = (
    "Analyze run directories (or the daemon's sample folder) offline. With --baseline every "
    "run is compared against it; without, each run is described on its own."
)


def _positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {value}")
    return number


def _alpha(value: str) -> float:
    number = _positive(value)
    if number >= 0.5:
        raise argparse.ArgumentTypeError(f"alpha must be below 0.5: {value}")
    return number


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The runs, the baseline, the statistics, quality, cost, publishing and failure conditions."""
    p.add_argument("runs", type=Path, nargs="+", help="candidate run directories")
    p.add_argument("--baseline", type=Path, help="the run to compare against (same prompts for drift)")
    p.add_argument("--out", type=Path, help="report folder (default: <first run>/analysis)")
    p.add_argument("--alpha", type=_alpha, default=0.05, help="significance level (default 0.05)")
    p.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples (default 10,000)")
    p.add_argument("--seed", type=int, default=20240611, help="bootstrap seed")
    p.add_argument(
        "--references", type=Path, help="scenario or prompt file with task/reference per prompt id"
    )
    p.add_argument(
        "--drift-similarity",
        type=_positive,
        default=0.9,
        help="outputs drifted when their mean ROUGE-L against the baseline's falls below this (default 0.9)",
    )
    p.add_argument("--no-semscore", action="store_true", help="skip SemScore (no embedding model)")
    p.add_argument(
        "--semscore-model", help="sentence-transformers model path or id (default all-MiniLM-L6-v2)"
    )
    p.add_argument("--usd-per-hour", type=_positive, help="price of one worker (GPU/host) per hour")
    p.add_argument("--tokens-per-month", type=_positive, help="monthly token volume to size workers for")
    p.add_argument("--burst-factor", type=_positive, default=1.0, help="p95 load / mean load (default 1)")
    p.add_argument("--pushgateway", help="push quality and regression series to this Pushgateway URL")
    p.add_argument("--push-job", default="infermeter_analyze", help="Pushgateway job name")
    p.add_argument("--textfile", type=Path, help="write the series for node_exporter's textfile collector")
    p.add_argument("--no-plots", action="store_true", help="write report.md without PNG figures")
    p.add_argument("--no-progress", action="store_true", help="no progress bar while scoring")
    p.add_argument("--json", action="store_true", help="print the analysis JSON instead of the table")
    p.add_argument(
        "--fail-on",
        choices=("worse", "drift", "any"),
        help=f"exit {EXIT_REGRESSION} on a worse metric, on quality drift (concerning or worse), or either",
    )


def _failed(result: AnalysisResult, fail_on: str | None) -> list[str]:
    if fail_on is None:
        return []
    why: list[str] = []
    if fail_on in ("worse", "any"):
        for label, counts in result.verdicts.items():
            if counts["worse"]:
                why.append(f"{label}: {counts['worse']} metric(s) worse than the baseline")
    if fail_on in ("drift", "any"):
        for label, d in (result.quality.drift if result.quality else {}).items():
            if d.tier in ("concerning", "unacceptable"):
                why.append(f"{label}: quality fell to tier {d.tier}")
            elif d.drifted:
                why.append(f"{label}: outputs drifted from the baseline's (ROUGE-L {d.output_rouge_l:.3f})")
    return why


def _runs(ns: argparse.Namespace, err: Console) -> tuple[list[Run], Run | None]:
    """The candidate runs and the baseline, every warning said; a run without records refused."""
    from analysis.runs import load_runs, read_references

    if ns.resamples < 100:
        raise ConfigError("--resamples must be at least 100 for a usable interval")
    try:
        refs = read_references(ns.references) if ns.references else None
    except ValueError as e:
        raise ConfigError(str(e), location=str(ns.references)) from e
    try:
        runs = [run for p in ns.runs for run in load_runs(p, refs)]
        baseline = _one_baseline(ns.baseline, refs) if ns.baseline else None
    except FileNotFoundError as e:  # a run that is not there is bad input, like a bad flag
        raise ConfigError(str(e)) from e
    for run in ([baseline] if baseline else []) + runs:
        for w in run.warnings:
            warn(err, w)
        if not len(run.rows):
            raise ConfigError(f"{run.path} has no readable records")
    return runs, baseline


def _analyze(ns: argparse.Namespace, err: Console, runs: list[Run], baseline: Run | None) -> AnalysisResult:
    """The analysis, with a progress bar while outputs are scored."""
    from analysis.analyze import Options, analyze

    opts = Options(
        alpha=ns.alpha,
        resamples=ns.resamples,
        seed=ns.seed,
        usd_per_hour=ns.usd_per_hour,
        tokens_per_month=ns.tokens_per_month,
        burst_factor=ns.burst_factor,
        semscore=not ns.no_semscore,
        semscore_model=ns.semscore_model,
        similarity_floor=ns.drift_similarity,
    )
    progress = Progress(
        TextColumn("scoring outputs"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        disable=ns.no_progress,
        transient=True,
    )
    with progress:
        task = progress.add_task("score", total=None)

        def tick(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        try:
            return analyze(runs, baseline, opts, progress=tick)
        except ValueError as e:  # e.g. two runs in folders of the same name
            raise ConfigError(str(e)) from e


def run(ns: argparse.Namespace, app: App) -> int:
    """Run the analysis and write ``report.md``, figures and ``summary.json`` into the report folder."""
    from analysis.publish import publish
    from analysis.render import render
    from analysis.render.figures import write_figures
    from analysis.render.html import analysis_html

    err = app.err
    runs, baseline = _runs(ns, err)
    result = _analyze(ns, err, runs, baseline)
    out = _out_dir(ns.out or runs[0].path / "analysis")
    everyone = ([baseline] if baseline else []) + runs
    result.figures = [] if ns.no_plots else write_figures(everyone, result, out)
    summary = render(result, "json")
    write_atomic(AnalysisDir(out).summary, summary)
    write_atomic(AnalysisDir(out).report_md, render(result, "markdown"))
    write_atomic(AnalysisDir(out).report_html, analysis_html(result, everyone))
    if ns.json:
        sys.stdout.write(summary)
    else:
        Console().print(render(result, "console"))
    if ns.pushgateway or ns.textfile:
        for line in publish(result, pushgateway=ns.pushgateway, textfile=ns.textfile, job=ns.push_job):
            err.print(line)
    figures = len(result.figures)
    err.print(f"report: {AnalysisDir(out).report_md} ({figures} figures) and report.html")
    err.print(f"summary: {out / 'summary.json'}")
    why = _failed(result, ns.fail_on)
    for line in why:
        err.print(f"[red]{line}[/red]")
    return EXIT_REGRESSION if why else EXIT_OK


#: What an analysis folder holds: its own files, and figures (``*.png``); anything else is not ours.
_OURS = AnalysisDir.files()


def _ours(path: Path) -> bool:
    return path.is_file() and not path.is_symlink() and (path.name in _OURS or path.suffix == ".png")


def _out_dir(out: Path) -> Path:
    """The report folder: new, empty, or an earlier analysis (rewritten); someone else's files refused."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ConfigError(f"--out {out} is not a directory; name a new or empty directory")
    if out.is_dir():
        foreign = [p.name for p in out.iterdir() if not _ours(p)]
        if foreign:
            raise ConfigError(
                f"--out {out} holds files that are not an analysis's ({', '.join(sorted(foreign)[:3])}); "
                "choose another --out (nothing was overwritten)"
            )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--out {out}: {e.strerror or e}") from e
    return out


def _one_baseline(path: Path, refs: Any) -> Run:
    """The baseline run; a samples folder that splits into several targets or configs is refused."""
    from analysis.runs import load_runs

    bases = load_runs(path, refs)
    if len(bases) > 1:
        labels = ", ".join(b.label for b in bases)
        raise ConfigError(
            f"--baseline {path} holds several targets or configs ({labels}); "
            "give the baseline as one of them (a records or samples file of one target)"
        )
    return bases[0]
