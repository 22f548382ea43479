"""The summary's server block from a run directory's scraped series and manifest windows, the warm-cache
flag, and what a sweep's knee is put down to."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from agent.core.server_metrics import FILE_HEADER
from analysis.results import Saturation, ServerGauge, ServerStage, ServerSummary, SweepCurve, SweepPoint
from analysis.server import saturation_cause, server_summary
from analysis.sweep import explain_knee

LAB = '{model_name="m"}'


def run_dir(tmp_path: Path, *, reset: bool, hits: float) -> Path:
    rows = [
        (100.0, "vllm:num_requests_waiting", LAB, 0.0),
        (100.0, "vllm:num_requests_running", LAB, 0.0),
        (100.0, "vllm:prefix_cache_queries_total", LAB, 0.0),
        (100.0, "vllm:prefix_cache_hits_total", LAB, 0.0),
        (100.0, "vllm:time_to_first_token_seconds_sum", LAB, 0.0),
        (100.0, "vllm:time_to_first_token_seconds_count", LAB, 0.0),
        (101.0, "vllm:num_requests_running", LAB, 2.0),
        (102.0, "vllm:num_requests_waiting", LAB, 4.0),
        (110.0, "vllm:prefix_cache_queries_total", LAB, 1000.0),
        (110.0, "vllm:prefix_cache_hits_total", LAB, hits),
        (110.0, "vllm:time_to_first_token_seconds_sum", LAB, 0.8),
        (110.0, "vllm:time_to_first_token_seconds_count", LAB, 4.0),
    ]
    with (tmp_path / "server_metrics.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(FILE_HEADER)
        w.writerows((f"{t:.3f}", "http://s/metrics", n, lab, repr(v)) for t, n, lab, v in rows)
    resets = [{"stage": "steady", "ok": True, "how": "vllm: POST /reset_prefix_cache"}] if reset else []
    manifest = {
        "server_metrics": {
            "file": "server_metrics.csv",
            "endpoints": [{"url": "http://s/metrics", "engine": "vllm", "scrapes": 11, "errors": 0}],
            "windows": [{"stage": "steady", "start_unix": 100.0, "end_unix": 110.0}],
        },
        "prefix_cache": {"policy": "reset" if reset else "keep", "resets": resets},
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path


def test_the_server_block_gives_each_stage_the_servers_own_figures(tmp_path: Path) -> None:
    got = (
        server_summary(run_dir(tmp_path, reset=True, hits=100.0), []) or ServerSummary(status="none")
    ).dump()
    assert got is not None and got["status"] == "scraped" and got["engine"] == "vllm"
    st = got["stages"][0]
    assert st["stage"] == "steady" and st["window_s"] == 10.0
    assert st["running"]["peak"] == 2.0 and st["waiting"]["peak"] == 4.0
    assert st["prefix_hit_ratio"] == 0.1 and st["ttft"]["mean_s"] == 0.2
    assert got["flags"] == [] and got["prefix_cache_resets"] == 1


def test_a_warm_cache_that_was_not_reset_is_flagged(tmp_path: Path) -> None:
    got = (
        server_summary(run_dir(tmp_path, reset=False, hits=800.0), []) or ServerSummary(status="none")
    ).dump()
    assert got is not None and len(got["flags"]) == 1
    assert "80 % of prompt tokens came from a prefix cache that was not reset" in got["flags"][0]


def test_a_run_that_scraped_nothing_has_no_block_and_a_lost_file_says_so(tmp_path: Path) -> None:
    assert server_summary(tmp_path, []) is None
    run_dir(tmp_path, reset=True, hits=0.0)
    (tmp_path / "server_metrics.csv").unlink()
    lost = server_summary(tmp_path, [])
    assert lost is not None and lost.dump() == {"status": "unavailable — server_metrics.csv is missing"}


def test_the_knee_is_put_down_to_what_the_server_says_filled_up() -> None:
    before = {"running": {"mean": 2.0, "peak": 2.0}, "waiting": {"mean": 0.0, "peak": 0.0}}
    queued = {
        "running": {"mean": 2.0, "peak": 2.0},
        "waiting": {"mean": 3.0, "peak": 6.0},
        "kv_usage": {"mean": 0.5, "peak": 0.95},
        "preemptions": 3.0,
    }
    before, queued = (
        ServerStage(stage="c=2", window_s=1.0, **before),
        ServerStage(stage="c=4", window_s=1.0, **queued),
    )
    cause = saturation_cause(before, queued) or ""
    assert "queued at the server (peak 6 waiting)" in cause and "KV cache filled (95 %" in cause
    assert "3 requests preempted" in cause
    flat = ServerStage(stage="c=4", window_s=1.0, running=ServerGauge(mean=2.0, peak=2.0))
    assert "no more requests at once" in (saturation_cause(before, flat) or "")
    points = [SweepPoint(stage=s, load=n, throughput_unit="req/s") for s, n in (("c=2", 2), ("c=4", 4))]
    curve = SweepCurve(points=points, saturated=Saturation(stage="c=4", why="throughput rose +1 %"))
    explain_knee(curve, ServerSummary(status="scraped", stages=[before, queued]))
    assert curve.saturated is not None and "queued at the server" in (curve.saturated.server or "")
    assert curve.points[1].server is not None and curve.points[1].server.waiting_peak == 6.0
