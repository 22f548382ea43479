"""The server's own figures per stage, read from ``server_metrics.csv``, set beside what the records say.

For each stage window the manifest kept, the server's mean and peak of requests running and waiting and
of KV-cache use, its preemptions and prefix-cache hit rate, and its own TTFT, ITL and E2E histograms
over the requests it finished in the window. The server's mean TTFT beside the records' wall TTFT makes
the client-and-network share a figure (wall minus server). A prefix cache that served a large share of
prompt tokens in a run that did not reset it is flagged: a repeated run against a warm cache reads
faster than a cold one would.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from agent.core.record import RequestRecord
from agent.core.rundir import RunDir
from agent.core.server_metrics import SeriesFile, read_series, window_figures

__all__ = ["WARM_CACHE_FLAG", "saturation_cause", "server_summary"]

#: a prefix hit ratio above this, with no reset before the stage, is flagged as a warm cache
WARM_CACHE_FLAG = 0.3


def _manifest(run_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads(RunDir(run_dir).manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _mean(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if known else None


def _stage_records(records: list[RequestRecord], stage: str) -> list[RequestRecord]:
    label = None if stage == "steady" else stage
    return [r for r in records if r.load_stage == label and r.stage == "steady" and r.status == "ok"]


def _stage(f: SeriesFile, window: dict[str, Any], records: list[RequestRecord]) -> dict[str, Any]:
    start, end = float(window["start_unix"]), float(window["end_unix"])
    figures = window_figures(f, start, end)
    out: dict[str, Any] = {"stage": window["stage"], "window_s": round(end - start, 3), **figures}
    ok = _stage_records(records, window["stage"])
    wall_ttft, wall_e2e = _mean(r.ttft_ms for r in ok), _mean(r.e2e_ms for r in ok)
    ttft, e2e = figures.get("ttft"), figures.get("e2e")
    if isinstance(ttft, dict) and "mean_s" in ttft and wall_ttft is not None:
        out["ttft_wall_mean_ms"] = wall_ttft
        out["ttft_server_mean_ms"] = ttft["mean_s"] * 1000
        out["ttft_client_and_network_ms"] = wall_ttft - ttft["mean_s"] * 1000
    if isinstance(e2e, dict) and "mean_s" in e2e and wall_e2e is not None:
        out["e2e_wall_mean_ms"] = wall_e2e
        out["e2e_server_mean_ms"] = e2e["mean_s"] * 1000
    return out


def _flags(stages: list[dict[str, Any]], resets: list[dict[str, Any]]) -> list[str]:
    done = {r.get("stage") for r in resets if r.get("ok")}
    flags = []
    for st in stages:
        ratio = st.get("prefix_hit_ratio")
        if isinstance(ratio, float) and ratio >= WARM_CACHE_FLAG and st["stage"] not in done:
            flags.append(
                f"{st['stage']}: {ratio * 100:.0f} % of prompt tokens came from a prefix cache that was not "
                "reset before the stage; a repeated run reads faster than a cold server would "
                "(--prefix-cache reset, or a server that offers a reset)"
            )
    return flags


def server_summary(run_dir: Path, records: Iterable[RequestRecord]) -> dict[str, Any] | None:
    """The run's ``server`` block, or None when nothing was scraped."""
    manifest = _manifest(run_dir)
    scraped = manifest.get("server_metrics")
    if not isinstance(scraped, dict) or not scraped.get("file"):
        return None
    path = run_dir / str(scraped["file"])
    if not path.is_file():
        return {"status": f"unavailable — {path.name} is missing"}
    f = read_series(path)
    recs = list(records)
    windows = [w for w in scraped.get("windows") or [] if isinstance(w, dict) and "start_unix" in w]
    stages = [_stage(f, w, recs) for w in windows]
    cache = manifest.get("prefix_cache") if isinstance(manifest.get("prefix_cache"), dict) else {}
    resets = [r for r in (cache or {}).get("resets") or [] if isinstance(r, dict)]
    return {
        "status": "scraped",
        "engine": f.engine(),
        "endpoints": [
            {k: ep.get(k) for k in ("url", "engine", "scrapes", "errors", "scrape_ms_p50")}
            for ep in scraped.get("endpoints") or []
            if isinstance(ep, dict)
        ],
        "stages": stages,
        "prefix_cache_policy": (cache or {}).get("policy"),
        "prefix_cache_resets": sum(1 for r in resets if r.get("ok")),
        "flags": _flags(stages, resets),
    }


def saturation_cause(before: dict[str, Any] | None, at: dict[str, Any] | None) -> str | None:
    """What the server says filled up between two sweep stages: its queue, KV cache, or preemptions."""
    if not at:
        return None
    causes = []
    waiting = (at.get("waiting") or {}).get("peak")
    if isinstance(waiting, float) and waiting >= 1:
        causes.append(f"requests queued at the server (peak {waiting:g} waiting)")
    kv = (at.get("kv_usage") or {}).get("peak")
    if isinstance(kv, float) and kv >= 0.9:
        causes.append(f"the KV cache filled ({kv * 100:.0f} % at peak)")
    preempted = at.get("preemptions")
    if isinstance(preempted, float) and preempted > 0:
        causes.append(f"{preempted:g} requests preempted")
    running, prev = (at.get("running") or {}).get("peak"), ((before or {}).get("running") or {}).get("peak")
    if not causes and isinstance(running, float) and isinstance(prev, float) and running <= prev:
        causes.append(f"the server ran no more requests at once than before (peak {running:g})")
    return "; ".join(causes) if causes else None
