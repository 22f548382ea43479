"""The folders infermeter writes, and the one place each of their files is named.

A run directory (``infermeter run``, a sweep, a study's cell), a study's folder and an analysis's report
folder each get a small object over their path. Each file is declared once, as a ``_File``: on a folder
it is the file's path (``RunDir(out).records``), on the class its name alone (``RunDir.records``), for
a listing of what a folder may hold or a message.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import overload

__all__ = ["AnalysisDir", "RunDir", "SamplingDir", "StudyDir"]

#: A worker process's records file in a run directory (``RunDir.worker_records``).
_WORKER_FILE = re.compile(r"records\.w(\d{1,4})\.jsonl")


class _Folder:
    """A folder's path, and the files its class declares."""

    __slots__ = ("path",)

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    @classmethod
    def files(cls) -> frozenset[str]:
        """The names of every file the folder may hold."""
        return frozenset(f.name for f in vars(cls).values() if isinstance(f, _File))


class _File:
    """One file of a folder, named once: its name on the folder's class, its path on a folder."""

    def __init__(self, name: str, doc: str) -> None:
        self.name = name
        self.__doc__ = doc

    @overload
    def __get__(self, folder: None, owner: type) -> str: ...

    @overload
    def __get__(self, folder: _Folder, owner: type) -> Path: ...

    def __get__(self, folder: _Folder | None, owner: type) -> str | Path:
        return self.name if folder is None else folder.path / self.name


class RunDir(_Folder):
    """One run's directory: its records, chains, manifest, summary, report, energy and server series."""

    __slots__ = ()

    records = _File("records.jsonl", "One JSON line per request, written as each ends.")
    chains = _File("chains.jsonl", "One JSON line per agent-step chain.")
    manifest = _File("manifest.json", "What ran, where and how; saved as the run goes.")
    summary = _File("summary.json", "The run's figures, written at its end (and by ``summarize``).")
    report = _File("report.html", "The run's HTML report.")
    energy = _File("energy.json", "Per-stage energy windows.")
    power = _File("power.csv", "Every power sample, replayable.")
    server_metrics = _File("server_metrics.csv", "The server's own series, one row per change.")
    simulator_log = _File("simulator.log", "The simulator's log, when it served the run.")
    engine_log = _File("engine.log", "The embedded engine's log, when it served the run.")
    cell_log = _File("cell.log", "What a study's cell said, when the run is one.")

    def record_files(self) -> list[Path]:
        """Every records file of the run: ``records.jsonl``, then each worker process's, in worker order.

        A run split across worker processes (``run --workers N``) has one ``records.w<k>.jsonl`` per
        worker beside an empty ``records.jsonl``.
        """
        found = ((_WORKER_FILE.fullmatch(p.name), p) for p in self.path.glob("records.w*.jsonl"))
        workers = sorted((int(m[1]), p) for m, p in found if m is not None)
        return [self.records, *(p for _, p in workers)]

    def worker_records(self, index: int) -> Path:
        """Worker process ``index``'s records file."""
        return self.path / f"records.w{index}.jsonl"

    def worker_chains(self, index: int) -> Path:
        """Worker process ``index``'s chain records (``chains.w<k>.jsonl``; only when it ran chains)."""
        return self.path / f"chains.w{index}.jsonl"


class StudyDir(_Folder):
    """A study's folder: its lock, results, reports and one run directory per cell."""

    __slots__ = ()

    lock = _File("study.lock.json", "The study's hash and cell order.")
    results = _File("study.json", "The study's typed results.")
    report_md = _File("report.md", "The study's report, Markdown.")
    report_html = _File("report.html", "The study's report, HTML.")
    cells = _File("cells", "The folder of the cells' run directories.")

    def cell(self, name: str) -> RunDir:
        """One cell's run directory."""
        return RunDir(self.cells / name)


class AnalysisDir(_Folder):
    """An analysis's report folder."""

    __slots__ = ()

    summary = _File("summary.json", "The analysis's typed results.")
    report_md = _File("report.md", "The report, Markdown.")
    report_html = _File("report.html", "The report, HTML.")


class SamplingDir(_Folder):
    """The daemon's sampling folder: its rotated probe samples and each target's server series."""

    __slots__ = ()

    #: the samples' file stem: ``samples.jsonl`` live, ``samples.1.jsonl`` … rotated out
    SAMPLES = "samples"

    def sample_files(self) -> list[Path]:
        """The rotated samples, oldest first (``samples.K.jsonl`` … ``samples.1.jsonl``, then live)."""

        def age(p: Path) -> int:
            parts = p.name.split(".")
            return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else 0

        return sorted(self.path.glob(f"{self.SAMPLES}*.jsonl"), key=age, reverse=True)

    def server_metrics(self, target: str) -> Path:
        """The series scraped from one target's server."""
        return self.path / f"server_metrics-{target}.csv"
