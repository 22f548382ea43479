"""A run as the analyzer sees it: records, manifest, summary and the quality references, read from disk.

A run directory is what ``infermeter run``/``sweep``/``replay`` wrote (``records.jsonl``,
``manifest.json``, ``summary.json``); the daemon's sample folder (``samples*.jsonl``, rotated) reads the
same way without a manifest. References come from the prompts in the manifest's normalised scenario, or
from a scenario or prompt file given with ``--references``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import ValidationError

from agent.core.manifest import Manifest
from agent.core.record import RequestRecord
from agent.core.rundir import RunDir, SamplingDir
from agent.core.yamlfile import describe_error
from analysis.columns import Output, Rows, outputs, read_columns
from analysis.quality import Reference
from analysis.records import MAX_LINE_BYTES, bounded_lines
from analysis.results import RunSummary, SweepSummary

__all__ = [
    "Run",
    "load_run",
    "load_runs",
    "read_references",
    "read_summary",
]


@dataclass
class Run:
    """Everything the analyzer reads from one run directory: its records as columns, and what they say.

    The figures read ``rows`` (columns, no object per record); the few readers that need a whole record
    (the quality scorers, for its text) stream them from ``sources`` with :meth:`iter_records`.
    """

    path: Path
    label: str
    rows: Rows
    manifest: Manifest | None = None
    #: the run's own ``summary.json`` (a sweep's is a ``SweepSummary``), where it could be read
    summary: RunSummary | SweepSummary | None = None
    references: dict[str, Reference] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    #: the record files the rows were read from, in order
    sources: list[Path] = field(default_factory=list)
    #: the (backend, run id) these rows are, where a samples folder was split by target and config
    key: tuple[str, str] | None = None
    #: True when every records file was read whole by the columnar reader (no line refused)
    read_fast: bool = False

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def run_id(self) -> str:
        """The run id the records carry (the folder name when there are none)."""
        return (
            str(self.rows.label_of("run_id", int(self.rows.codes("run_id")[0])))
            if len(self.rows)
            else self.path.name
        )

    @property
    def models(self) -> list[str]:
        """Models the records name, in first-seen order."""
        return [str(m) for m in self.rows.groups("model")]

    @property
    def backends(self) -> list[str]:
        """Backends the records name, in first-seen order."""
        return [str(b) for b in self.rows.groups("backend")]

    @property
    def ok(self) -> int:
        """How many records are ok."""
        return int(self.rows.is_("status", "ok").sum())

    @cached_property
    def by_scenario(self) -> dict[str, Rows]:
        """Rows grouped by scenario, in first-seen order."""
        return {str(k): v for k, v in self.rows.groups("scenario").items()}

    def scenario(self, name: str) -> Rows:
        """The rows of one scenario (none where the run did not run it)."""
        rows = self.by_scenario.get(name)
        return rows if rows is not None else self.rows.where(np.zeros(len(self.rows), dtype=bool))

    def iter_outputs(self) -> Iterator[Output | RequestRecord]:
        """What the quality scorers read of each ok steady record, in file order.

        Files the columnar reader took whole are read again for these few fields only; otherwise each
        line goes through the record model (:meth:`iter_records`), so the same lines count either way.
        """
        if not self.read_fast:
            yield from self.iter_records()
            return
        for source in self.sources:
            yield from outputs(source, self.key)

    def iter_records(self) -> Iterator[RequestRecord]:
        """The run's records as objects, one at a time, in file order (lines that do not parse left out)."""
        for source in self.sources:
            with source.open("rb") as fh:
                for _, line in bounded_lines(fh, MAX_LINE_BYTES):
                    if line is None or not line.strip():
                        continue
                    try:
                        r = RequestRecord.model_validate_json(line)
                    except ValidationError:
                        continue
                    if self.key is None or (r.backend, r.run_id) == self.key:
                        yield r


def read_summary(path: Path, warnings: list[str]) -> RunSummary | SweepSummary | None:
    """The run's own summary; one written by another version is set aside (the records still say it all)."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_bytes())
        if isinstance(data, dict) and "sweep" in data:
            return SweepSummary.model_validate(data)
        return RunSummary.model_validate(data)
    except ValidationError as e:
        why = describe_error(e.errors()[0])
        warnings.append(f"{path}: {why}; its figures are computed from the records again")
    except ValueError as e:  # not JSON, or not UTF-8
        warnings.append(f"{path} is not valid JSON: {e}")
    return None


def _prompts_to_references(prompts: list[Any]) -> dict[str, Reference]:
    out: dict[str, Reference] = {}
    for p in prompts:
        if isinstance(p, dict) and p.get("id") and (p.get("reference") is not None or p.get("task")):
            out[str(p["id"])] = Reference(task=str(p.get("task") or "qa"), reference=p.get("reference"))
    return out


def _manifest_references(manifest: Manifest | None) -> dict[str, Reference]:
    if manifest is None:
        return {}
    out: dict[str, Reference] = {}
    for sc in manifest.scenarios:
        prompts = sc.normalised.get("prompts")
        out.update(_prompts_to_references(prompts if isinstance(prompts, list) else []))
    return out


def read_references(path: Path) -> dict[str, Reference]:
    """References from a scenario file (its prompts, files resolved) or a prompt file (a YAML list)."""
    from agent.core.scenario import load_scenario  # the scenario loader resolves prompt files beside it

    if not path.is_file():
        raise FileNotFoundError(f"references file {path} does not exist")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if isinstance(data, dict):
        scenario = load_scenario(path)
        return _prompts_to_references([p.model_dump() for p in scenario.prompt_list()])
    if isinstance(data, list):
        return _prompts_to_references(data)
    raise ValueError(f"{path}: expected a scenario (mapping) or a prompt list")


def load_runs(path: Path, references: dict[str, Reference] | None = None) -> list[Run]:
    """A run directory as one run; a daemon's samples folder as one run per target and config.

    The daemon labels its samples with the target (``backend``) and the config it ran under (the
    ``run_id`` ends with the config's hash), so a folder that saw several targets or a reload splits
    into runs labelled ``<folder>:<target>`` (and ``@<config>`` when one target saw several configs);
    mixing them would compare a model with itself under another one.
    """
    run = load_run(path, references)
    rows = run.rows
    backend, run_id = rows.codes("backend").astype(np.int64), rows.codes("run_id").astype(np.int64)
    pair = backend * (1 << 32) + run_id
    uniq, first = np.unique(pair, return_index=True)
    if uniq.size < 2 or (Path(path).is_dir() and RunDir(path).records.is_file()):
        return [run]
    groups = []
    for p in uniq[np.argsort(first)].tolist():
        part = rows.where(pair == p)
        b = str(part.label_of("backend", p >> 32))
        r = str(part.label_of("run_id", p & 0xFFFFFFFF))
        groups.append((b, r, part))
    per_target: dict[str, int] = {}
    for b, _, _ in groups:
        per_target[b] = per_target.get(b, 0) + 1
    out = []
    for b, r, part in groups:
        label = f"{run.label}:{b}"
        if per_target[b] > 1:
            label += f"@{r.rsplit('-', 1)[-1]}"
        out.append(dataclasses.replace(run, label=label, rows=part, key=(b, r)))
    return out


def load_run(path: Path, references: dict[str, Reference] | None = None) -> Run:
    """Read a run directory (or a records/samples JSONL file); unreadable lines become warnings."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; pass a run directory written by `infermeter run`")
    folder = path if path.is_dir() else path.parent
    if path.is_dir() and not RunDir(path).records.is_file():
        files = SamplingDir(path).sample_files()
        if not files:
            raise FileNotFoundError(f"{path} holds neither records.jsonl nor the daemon's samples*.jsonl")
    else:
        files = RunDir(path).record_files() if path.is_dir() else [path]
    cols = read_columns(files)
    warnings = list(cols.warnings)
    try:
        manifest = Manifest.read(RunDir(folder).manifest)
    except ValueError as e:
        warnings.append(str(e))
        manifest = None
    summary = read_summary(RunDir(folder).summary, warnings)
    refs = _manifest_references(manifest)
    if references:
        refs.update(references)
    label = folder.name if path.is_dir() else path.stem
    return Run(
        folder, label, cols.rows(), manifest, summary, refs, warnings, sources=files, read_fast=cols.fast
    )
