"""The energy part of a summary: macro windows per stage, and what the samples could see (method §5).

J/token and energy per 1M tokens come only from stage macro windows measured with good coverage;
request windows are counted by quality so the share the sensor could not see is reported.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from agent.core.manifest import Manifest
from agent.core.record import RequestRecord
from agent.core.rundir import RunDir
from analysis.columns import Rows, as_rows
from analysis.results import EnergyRequests, EnergyStage, EnergySummary

__all__ = ["energy_summary"]

_MEASURED = ("good", "counter")


def energy_summary(run_dir: Path, records: Rows | Iterable[RequestRecord]) -> EnergySummary | None:
    """Energy figures from ``energy.json`` and the records; None when the run has no energy block."""
    try:
        manifest = Manifest.read(RunDir(run_dir).manifest)
    except (OSError, ValueError):  # an unreadable manifest: the energy file alone still says what it can
        manifest = None
    block = manifest.energy if manifest is not None else None
    data = _json(RunDir(run_dir).energy)
    if block is None and data is None:
        return None
    out = EnergySummary(status=block.status if block is not None else "measured")
    if data is None:
        return out
    records = as_rows(records)
    qualities = Counter(
        {str(k): v for k, v in _label_counts(records, "energy_quality").items() if k is not None}
    )
    windows = sum(qualities.values())
    out.baseline = data.get("baseline")
    out.poller = data.get("poller")
    out.requests = EnergyRequests(
        windows=windows,
        by_quality=dict(sorted(qualities.items())),
        no_data_share=qualities["no_data"] / windows if windows else None,
    )
    out.stages = [_stage(row, records) for row in data.get("stages", [])]
    return out


def _label_counts(rows: Rows, name: str) -> dict[object, int]:
    codes, counts = np.unique(rows.codes(name), return_counts=True)
    return {rows.label_of(name, int(c)): int(n) for c, n in zip(codes, counts, strict=True)}


def _stage(row: dict[str, Any], records: Rows) -> EnergyStage:
    """A stage's macro window against the output tokens of the requests in it.

    The window starts after the warmup (the runner marks when), so warmup tokens are left out too:
    J/token is a steady-state figure, never diluted or inflated by a cold start.
    """
    label = row.get("stage")
    in_stage = records.is_("load_stage", label) | (records.is_("load_stage", None) & (label == "steady"))
    recs = records.where(in_stage) if in_stage.any() else records
    counted = recs.is_("status", "ok") & ~recs.f("is_warmup")
    tokens = int(np.nan_to_num(recs.f("output_tokens")[counted]).sum())
    raw = row.get("energy_j")
    energy = float(raw) if isinstance(raw, int | float) else None
    measured = row.get("quality") in _MEASURED and energy is not None and tokens > 0
    return EnergyStage(
        stage=label,
        quality=row.get("quality"),
        duration_s=row.get("duration_s"),
        samples=row.get("samples"),
        mean_power_w=row.get("mean_power_w"),
        delta_power_w=row.get("delta_power_w"),
        energy_j=energy,
        output_tokens=tokens,
        j_per_token=energy / tokens if measured and energy is not None else None,
        kwh_per_1m_tokens=energy / tokens * 1e6 / 3.6e6 if measured and energy is not None else None,
        flags=row.get("flags", []),
    )


def _json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
