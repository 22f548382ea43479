"""Carry out a study: every cell an ordinary ``infermeter run`` in its own process, resumable.

Cells run in the study's order, each into ``DIR/cells/<variant>--<scenario>--r<n>/``. A cell whose
manifest says ``completed`` is kept on a rerun; an interrupted or failed one is cleared and run again.
``DIR/study.lock.json`` holds the study's hash: a changed study file is refused unless allowed, so a
resumed study never mixes cells of two different plans by accident. Ctrl-C stops the cell in flight (it
keeps its records, marked interrupted) and the study; the same command resumes it.

A variant with ``serve:`` gets its server started by the study (``infermeter serve`` in its own process,
its log in ``DIR/servers/``) before its first cell; the server stays up for the rest of the study, so its
start is never inside a cell, and stops when the study stops.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent.core.errors import ConfigError
from agent.core.files import write_atomic
from agent.core.manifest import Manifest, ManifestFile, write_json_atomic
from agent.core.redact import redact
from agent.core.rundir import RunDir, StudyDir
from agent.core.study import Cell, Study, cell_status

__all__ = ["CELL_FILES", "Servers", "StudyOutcome", "StudyRunner", "cell_argv", "serve_argv"]

#: What a cell's folder may hold: everything ``infermeter run`` writes, plus the cell's own log.
CELL_FILES = RunDir.files()


#: ``prctl`` option: the signal a process gets when its parent dies.
_PR_SET_PDEATHSIG = 1


def dies_with_parent() -> Callable[[], None] | None:
    """For ``Popen(preexec_fn=...)``: the child gets SIGTERM when this process dies, even by SIGKILL.

    A killed study then leaves no cell or server running on its own (Linux's parent-death signal; a
    child whose parent was already gone when it started exits at once). None where there is no such
    signal.
    """
    if not sys.platform.startswith("linux"):
        return None
    parent = os.getpid()

    def arm() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            os._exit(1)

    return arm


def _flag(name: str, value: object) -> list[str]:
    return [] if value is None else [name, str(value)]


def cell_argv(study: Study, cell: Cell, out: Path, base_url: str | None = None) -> list[str]:
    """The ``infermeter run`` command line of one cell (``base_url``: the variant's started server)."""
    v = study.variants[cell.variant]
    argv = [sys.executable, "-m", "agent.cli", "run", str(study.resolve(cell.scenario))]
    argv += ["--backend", v.backend, "--out", str(out), "--no-progress", "--energy", study.energy]
    argv += _flag("--model", v.model) + _flag("--base-url", base_url or v.base_url)
    argv += _flag("--compile", v.compile)
    if v.serve is None:
        argv += _flag("--model-path", study.resolve(v.model_path) if v.model_path else None)
    for key, value in v.args.items():
        argv += ["--backend-arg", f"{key}={json.dumps(value)}"]  # JSON is YAML: types survive
    argv += _flag("--requests", study.requests) + _flag("--duration", study.duration)
    argv += _flag("--concurrency", study.concurrency) + _flag("--warmup", study.warmup)
    argv += _flag("--max-tokens", study.max_tokens)
    slo = study.slo
    argv += _flag("--slo-ttft-ms", slo.ttft_ms) + _flag("--slo-tpot-ms", slo.tpot_ms)
    return argv + _flag("--slo-e2e-ms", slo.e2e_ms)


def serve_argv(study: Study, variant: str) -> list[str]:
    """The ``infermeter serve`` command line of a variant's server."""
    v = study.variants[variant]
    assert v.serve is not None
    argv = [sys.executable, "-m", "agent.cli", "serve", "--api", v.backend, "--port", "0"]
    argv += ["--slots", str(v.serve.slots), *_flag("--threads", v.serve.threads)]
    argv += _flag("--requantize", v.serve.requantize)
    return argv + _flag("--model-path", study.resolve(v.model_path) if v.model_path else None)


class ServerFailed(Exception):
    """A variant's server did not start; its cells fail with this reason and the study goes on."""


class Servers:
    """The servers a study started, one per ``serve:`` variant, each up until ``stop_all``."""

    def __init__(self, study: Study, folder: Path) -> None:
        self.study, self.folder = study, folder
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.urls: dict[str, str] = {}
        self.failed: dict[str, str] = {}

    def url(self, variant: str) -> str | None:
        """The variant's server URL, starting the server on first use; None for a variant without one.

        A server that did not start raises ``ServerFailed`` now and for the variant's later cells.
        """
        spec = self.study.variants[variant].serve
        if spec is None:
            return None
        if variant in self.failed:
            raise ServerFailed(self.failed[variant])
        if variant not in self.urls:
            try:
                self.urls[variant] = self._start(variant, spec.startup_timeout_s)
            except ServerFailed as e:
                self.failed[variant] = str(e)
                raise
        return self.urls[variant]

    def _start(self, variant: str, timeout_s: float) -> str:
        self.folder.mkdir(parents=True, exist_ok=True)
        log = self.folder / f"{variant}.log"
        with log.open("ab") as err:
            proc = subprocess.Popen(
                serve_argv(self.study, variant),
                stdout=subprocess.PIPE,
                stderr=err,
                start_new_session=True,
                preexec_fn=dies_with_parent(),
            )
        self.procs[variant] = proc
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
        line = proc.stdout.readline().decode().strip() if ready else ""
        if not line.startswith("http://"):
            self._stop(variant)
            said = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
            why = f": {said[-1]}" if said and ready else f" in {timeout_s:.0f} s"
            raise ServerFailed(f"the server of variant '{variant}' did not start{why} (log: {log})")
        return line

    def _stop(self, variant: str) -> None:
        proc = self.procs.pop(variant)
        self.urls.pop(variant, None)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def stop_all(self) -> None:
        """Stop every started server (Ctrl-C first, then by force)."""
        for variant in list(self.procs):
            self._stop(variant)


@dataclass(slots=True)
class StudyOutcome:
    """How the cells went this time: run now, kept from before, failed, and whether Ctrl-C stopped it."""

    ran: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    interrupted: bool = False


class StudyRunner:
    """Runs a study's cells under ``root``; ``on_cell(done, total, cell, status)`` reports progress."""

    def __init__(self, study: Study, root: Path, *, allow_changed: bool = False) -> None:
        self.study, self.root = study, root
        self.cells_dir = StudyDir(root).cells
        self.allow_changed = allow_changed
        self.servers = Servers(study, root / "servers")

    def check_lock(self) -> None:
        """Refuse a folder holding another study, or this study's file changed since the folder began."""
        lock = StudyDir(self.root).lock
        if not lock.exists():
            if self.root.exists() and any(p.name != StudyDir.cells for p in self.root.iterdir()):
                raise ConfigError(f"--out {self.root} holds something else; name a new or empty folder")
            return
        try:
            held = json.loads(lock.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ConfigError(f"{lock} is unreadable ({e}); name another --out") from e
        if held.get("name") != self.study.name:
            raise ConfigError(f"--out {self.root} holds study '{held.get('name')}', not '{self.study.name}'")
        if held.get("sha256") != self.study.config_hash() and not self.allow_changed:
            raise ConfigError(
                f"the study file changed since {self.root} was started; rerun with --allow-changed to keep "
                "the completed cells that still belong to it, or name a new --out"
            )

    def _write_lock(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        record = {
            "name": self.study.name,
            "sha256": self.study.config_hash(),
            "source": self.study.source,
            "order": self.study.order,
            "seed": self.study.seed,
            "cells": [c.name for c in self.study.cells()],
            "updated_unix_s": time.time(),
        }
        write_json_atomic(StudyDir(self.root).lock, record)

    def run(self, on_cell: Callable[[int, int, Cell, str], None] | None = None) -> StudyOutcome:
        """Every cell not yet completed, in the study's order; started servers stop at the end."""
        self.check_lock()
        self._write_lock()
        try:
            return self._cells(on_cell)
        finally:
            self.servers.stop_all()

    def _cells(self, on_cell: Callable[[int, int, Cell, str], None] | None) -> StudyOutcome:
        outcome = StudyOutcome()
        cells = self.study.cells()
        for i, cell in enumerate(cells):
            folder = self.cells_dir / cell.name
            if cell_status(folder) == "completed":
                outcome.kept.append(cell.name)
                if on_cell is not None:
                    on_cell(i + 1, len(cells), cell, "kept")
                continue
            if on_cell is not None:
                on_cell(i, len(cells), cell, "running")
            status = self._run_cell(cell, folder)
            (outcome.ran if status == "completed" else outcome.failed).append(cell.name)
            if status == "interrupted":
                outcome.interrupted = True
                break
            if on_cell is not None:
                on_cell(i + 1, len(cells), cell, status)
        return outcome

    def _clear(self, folder: Path) -> None:
        """Remove what an unfinished cell left, refusing anything a run does not write."""
        if not folder.exists():
            return
        strange = [p.name for p in folder.iterdir() if p.name not in CELL_FILES or not p.is_file()]
        if strange:
            raise ConfigError(
                f"{folder} holds files a cell does not write ({', '.join(strange)}); move them away"
            )
        shutil.rmtree(folder)

    def _run_cell(self, cell: Cell, folder: Path) -> str:
        """Run one cell in its own process; its status afterwards."""
        self._clear(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        log_path = folder.parent / f"{cell.name}.log"
        try:
            base_url = self.servers.url(cell.variant)
        except ServerFailed as e:  # the cell fails with the reason; the study goes on
            folder.mkdir()
            RunDir(folder).cell_log.write_text(f"error: {e}\n", encoding="utf-8")
            ManifestFile(RunDir(folder).manifest, Manifest(status="failed", error=str(e))).save()
            return "failed"
        with log_path.open("w", encoding="utf-8") as log:
            proc = subprocess.Popen(
                cell_argv(self.study, cell, folder, base_url),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=dies_with_parent(),
            )
            try:
                proc.wait()
            except KeyboardInterrupt:
                proc.send_signal(signal.SIGINT)  # the cell writes what it has, marked interrupted
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=60)
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                return "interrupted"
        if folder.exists():
            said = log_path.read_text(encoding="utf-8", errors="replace")
            # what the cell said, through the same mask
            write_atomic(RunDir(folder).cell_log, redact(said))
            log_path.unlink()
        return cell_status(folder)
