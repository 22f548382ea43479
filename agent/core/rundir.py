"""The folders infermeter writes, and the one place each of their files is named.

A run directory (``infermeter run``, a sweep, a study's cell), a study's folder and an analysis's report
folder each get a small object over their path; code asks it for ``run.records`` or ``run.manifest``
and never spells a file name itself. The names are also class attributes (``RunDir.RECORDS``) for the
few places that need the name alone: a listing of what a folder may hold, or a message.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

__all__ = ["AnalysisDir", "RunDir", "SamplingDir", "StudyDir"]


class RunDir:
    """One run's directory: its records, chains, manifest, summary, report, energy and server series."""

    __slots__ = ("path",)

    RECORDS: ClassVar[str] = "records.jsonl"
    CHAINS: ClassVar[str] = "chains.jsonl"
    MANIFEST: ClassVar[str] = "manifest.json"
    SUMMARY: ClassVar[str] = "summary.json"
    REPORT: ClassVar[str] = "report.html"
    ENERGY: ClassVar[str] = "energy.json"
    POWER: ClassVar[str] = "power.csv"
    SERVER_METRICS: ClassVar[str] = "server_metrics.csv"
    SIMULATOR_LOG: ClassVar[str] = "simulator.log"
    ENGINE_LOG: ClassVar[str] = "engine.log"
    #: every file a run may write
    FILES: ClassVar[frozenset[str]] = frozenset(
        {RECORDS, CHAINS, MANIFEST, SUMMARY, REPORT, ENERGY, POWER, SERVER_METRICS, SIMULATOR_LOG, ENGINE_LOG}
    )

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def records(self) -> Path:
        """One JSON line per request, written as each ends."""
        return self.path / self.RECORDS

    @property
    def chains(self) -> Path:
        """One JSON line per agent-step chain."""
        return self.path / self.CHAINS

    @property
    def manifest(self) -> Path:
        """What ran, where and how; saved as the run goes."""
        return self.path / self.MANIFEST

    @property
    def summary(self) -> Path:
        """The run's figures, written at its end (and by ``summarize``)."""
        return self.path / self.SUMMARY

    @property
    def report(self) -> Path:
        """The run's HTML report."""
        return self.path / self.REPORT

    @property
    def energy(self) -> Path:
        """Per-stage energy windows."""
        return self.path / self.ENERGY

    @property
    def power(self) -> Path:
        """Every power sample, replayable."""
        return self.path / self.POWER

    @property
    def server_metrics(self) -> Path:
        """The server's own series, one row per change."""
        return self.path / self.SERVER_METRICS

    @property
    def simulator_log(self) -> Path:
        """The simulator's log, when it served the run."""
        return self.path / self.SIMULATOR_LOG

    @property
    def engine_log(self) -> Path:
        """The embedded engine's log, when it served the run."""
        return self.path / self.ENGINE_LOG


class StudyDir:
    """A study's folder: its lock, results, reports and one run directory per cell."""

    __slots__ = ("path",)

    LOCK: ClassVar[str] = "study.lock.json"
    RESULTS: ClassVar[str] = "study.json"
    REPORT_MD: ClassVar[str] = "report.md"
    REPORT_HTML: ClassVar[str] = "report.html"
    CELLS: ClassVar[str] = "cells"
    CELL_LOG: ClassVar[str] = "cell.log"
    #: what a cell's folder may hold: everything a run writes, plus what the cell said
    CELL_FILES: ClassVar[frozenset[str]] = RunDir.FILES | {CELL_LOG}

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    @property
    def lock(self) -> Path:
        """The study's hash and cell order."""
        return self.path / self.LOCK

    @property
    def results(self) -> Path:
        """The study's typed results."""
        return self.path / self.RESULTS

    @property
    def report_md(self) -> Path:
        """The study's report, Markdown."""
        return self.path / self.REPORT_MD

    @property
    def report_html(self) -> Path:
        """The study's report, HTML."""
        return self.path / self.REPORT_HTML

    @property
    def cells(self) -> Path:
        """The folder of the cells' run directories."""
        return self.path / self.CELLS

    def cell(self, name: str) -> RunDir:
        """One cell's run directory."""
        return RunDir(self.cells / name)

    @classmethod
    def cell_log(cls, cell: RunDir) -> Path:
        """What a cell's process said."""
        return cell.path / cls.CELL_LOG


class AnalysisDir:
    """An analysis's report folder."""

    __slots__ = ("path",)

    SUMMARY: ClassVar[str] = "summary.json"
    REPORT_MD: ClassVar[str] = "report.md"
    REPORT_HTML: ClassVar[str] = "report.html"
    #: the files ``analyze`` writes (a folder holding only these may be written again)
    FILES: ClassVar[frozenset[str]] = frozenset({SUMMARY, REPORT_MD, REPORT_HTML})

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    @property
    def summary(self) -> Path:
        """The analysis's typed results."""
        return self.path / self.SUMMARY

    @property
    def report_md(self) -> Path:
        """The report, Markdown."""
        return self.path / self.REPORT_MD

    @property
    def report_html(self) -> Path:
        """The report, HTML."""
        return self.path / self.REPORT_HTML


class SamplingDir:
    """The daemon's sampling folder: its rotated probe samples and each target's server series."""

    __slots__ = ("path",)

    #: the samples' file stem: ``samples.jsonl`` live, ``samples.1.jsonl`` … rotated out
    SAMPLES: ClassVar[str] = "samples"

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def sample_files(self) -> list[Path]:
        """The rotated samples, oldest first (``samples.K.jsonl`` … ``samples.1.jsonl``, then live)."""

        def age(p: Path) -> int:
            parts = p.name.split(".")
            return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else 0

        return sorted(self.path.glob(f"{self.SAMPLES}*.jsonl"), key=age, reverse=True)

    def server_metrics(self, target: str) -> Path:
        """The series scraped from one target's server."""
        return self.path / f"server_metrics-{target}.csv"
