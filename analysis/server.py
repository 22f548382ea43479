"""The server's own figures per stage, read from ``server_metrics.csv``, set beside what the records say.

For each stage window the manifest kept, the server's mean and peak of requests running and waiting and
of KV-cache use, its preemptions and prefix-cache hit rate, and its own TTFT, ITL and E2E histograms
over the requests it finished in the window. The server's mean TTFT beside the records' wall TTFT makes
the client-and-network share a figure (wall minus server). A prefix cache that served a large share of
prompt tokens in a run that did not reset it is flagged: a repeated run against a warm cache reads
faster than a cold one would.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from agent.core.manifest import CacheResetEntry, Manifest, StageWindow
from agent.core.record import RequestRecord
from agent.core.rundir import RunDir
from agent.core.server_metrics import SeriesFile, read_series, window_figures
from analysis.columns import Rows, as_rows
from analysis.results import ServerEndpoint, ServerStage, ServerSummary

__all__ = ["WARM_CACHE_FLAG", "saturation_cause", "server_summary"]

#: a prefix hit ratio above this, with no reset before the stage, is flagged as a warm cache
WARM_CACHE_FLAG = 0.3


def _mean(values: np.ndarray) -> float | None:
    known = values[~np.isnan(values)]
    return statistics.fmean(known.tolist()) if known.size else None


def _stage_records(records: Rows, stage: str) -> Rows:
    label = None if stage == "steady" else stage
    return records.where(
        records.is_("load_stage", label) & records.is_("stage", "steady") & records.is_("status", "ok")
    )


def _stage(f: SeriesFile, window: StageWindow, records: Rows) -> ServerStage:
    start, end = window.start_unix, window.end_unix
    figures = window_figures(f, start, end)  # the core's concepts, named as ServerStage names them
    out = ServerStage.model_validate({"stage": window.stage, "window_s": round(end - start, 3), **figures})
    ok = _stage_records(records, window.stage)
    wall_ttft, wall_e2e = _mean(ok.f("ttft_ms")), _mean(ok.f("e2e_ms"))
    if out.ttft is not None and out.ttft.mean_s is not None and wall_ttft is not None:
        out.ttft_wall_mean_ms = wall_ttft
        out.ttft_server_mean_ms = out.ttft.mean_s * 1000
        out.ttft_client_and_network_ms = wall_ttft - out.ttft.mean_s * 1000
    if out.e2e is not None and out.e2e.mean_s is not None and wall_e2e is not None:
        out.e2e_wall_mean_ms = wall_e2e
        out.e2e_server_mean_ms = out.e2e.mean_s * 1000
    return out


def _flags(stages: list[ServerStage], resets: list[CacheResetEntry]) -> list[str]:
    done = {r.stage for r in resets if r.ok}
    flags = []
    for st in stages:
        ratio = st.prefix_hit_ratio
        if ratio is not None and ratio >= WARM_CACHE_FLAG and st.stage not in done:
            flags.append(
                f"{st.stage}: {ratio * 100:.0f} % of prompt tokens came from a prefix cache that was not "
                "reset before the stage; a repeated run reads faster than a cold server would "
                "(--prefix-cache reset, or a server that offers a reset)"
            )
    return flags


def server_summary(run_dir: Path, records: Rows | Iterable[RequestRecord]) -> ServerSummary | None:
    """The run's ``server`` block, or None when nothing was scraped."""
    try:
        manifest = Manifest.read(RunDir(run_dir).manifest)
    except (OSError, ValueError):
        return None
    scraped = manifest.server_metrics if manifest is not None else None
    if manifest is None or scraped is None or not scraped.file:
        return None
    path = run_dir / scraped.file
    if not path.is_file():
        return ServerSummary(status=f"unavailable — {path.name} is missing")
    f = read_series(path)
    rows = as_rows(records)
    stages = [_stage(f, w, rows) for w in scraped.windows]
    cache = manifest.prefix_cache
    resets = cache.resets if cache is not None else []
    return ServerSummary(
        status="scraped",
        engine=f.engine(),
        endpoints=[
            ServerEndpoint(
                url=ep.url,
                engine=ep.engine,
                scrapes=ep.scrapes,
                errors=ep.errors,
                scrape_ms_p50=ep.scrape_ms_p50,
            )
            for ep in scraped.endpoints
        ],
        stages=stages,
        prefix_cache_policy=cache.policy if cache is not None else None,
        prefix_cache_resets=sum(1 for r in resets if r.ok),
        flags=_flags(stages, resets),
    )


def saturation_cause(before: ServerStage | None, at: ServerStage | None) -> str | None:
    """What the server says filled up between two sweep stages: its queue, KV cache, or preemptions."""
    if at is None:
        return None
    causes = []
    waiting = at.peak("waiting")
    if waiting is not None and waiting >= 1:
        causes.append(f"requests queued at the server (peak {waiting:g} waiting)")
    kv = at.peak("kv_usage")
    if kv is not None and kv >= 0.9:
        causes.append(f"the KV cache filled ({kv * 100:.0f} % at peak)")
    preempted = at.preemptions
    if preempted is not None and preempted > 0:
        causes.append(f"{preempted:g} requests preempted")
    running, prev = at.peak("running"), before.peak("running") if before is not None else None
    if not causes and running is not None and prev is not None and running <= prev:
        causes.append(f"the server ran no more requests at once than before (peak {running:g})")
    return "; ".join(causes) if causes else None
