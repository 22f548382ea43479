"""``run --ray``: one run's workers on the nodes of Ray's own multi-node test cluster, against the simulator.

The cluster is Ray's ``cluster_utils.Cluster`` (a head and a second node, one CPU each, on loopback) in a
process of its own (``tests/ray_cluster.py``). The proofs: every record of one seeded schedule reaches
the run directory here, the schedule's rate holds across the nodes, each node's clock offset is measured
and recorded, one summary carries exact percentiles over every request, a stop signal stops every worker,
and a node lost mid-run is reported with the records it had sent kept.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.integration.conftest import ROOT, cli_env, run_cli, sim_server, start_cli, wait_for
from tests.integration.test_workers import argv, lines, records_of

pytest.importorskip("ray", reason="Ray is an optional extra; `make install-dev` installs it")

pytestmark = pytest.mark.slow

#: what makes Ray on one machine bind loopback only, for the cluster and for the run that joins it
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


class LoopbackCluster:
    """The cluster process: its address, its node ids (the head first), and a way to lose a node."""

    def __init__(self, proc: subprocess.Popen[str], info: dict[str, Any]) -> None:
        self.proc, self.address, self.nodes = proc, str(info["address"]), list(info["nodes"])

    def remove(self, node_id: str) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"remove {node_id}\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "removed"


def start_cluster() -> Iterator[LoopbackCluster]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.ray_cluster", "2"],
        cwd=ROOT,
        env={**os.environ, **RAY_ENV},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        line = proc.stdout.readline()
        assert line, "the Ray test cluster did not start"
        yield LoopbackCluster(proc, json.loads(line))
    finally:
        proc.stdin.close()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LoopbackCluster]:
    yield from start_cluster()


def env(cache_dir: Path) -> dict[str, str]:
    return {**cli_env(cache_dir), **RAY_ENV}


def node_copies() -> list[Path]:
    """The folders the workers keep their records in on their nodes (all this machine's, here)."""
    return list(Path(tempfile.gettempdir()).glob("infermeter-worker-*"))


def test_an_open_loop_across_two_nodes_keeps_one_schedule_every_record_and_exact_percentiles(
    tmp_path: Path, cache_dir: Path, cluster: LoopbackCluster
) -> None:
    with sim_server("--ttft-ms", "3", "--itl-ms", "1") as base:
        common = argv(
            "run chat --requests 200 --rate 50 --arrival poisson --seed 11 --warmup 2 --max-tokens 3", base
        )
        spread = run_cli(
            [*common, "--ray", cluster.address, "--out", str(tmp_path / "ray")],
            cache_dir,
            300,
            env=env(cache_dir),
        )
        one = run_cli([*common, "--out", str(tmp_path / "one")], cache_dir, 300)
    assert spread.returncode == 0, spread.stderr
    assert one.returncode == 0, one.stderr
    assert (
        "load split across 2 workers on the Ray cluster" in spread.stderr
    )  # --workers auto: the cluster's CPUs
    out = tmp_path / "ray"
    got, single = records_of(out), records_of(tmp_path / "one")
    # every record of the schedule reached this machine's run directory, none twice
    assert len(got) == 202 and all(r["status"] == "ok" for r in got)
    assert len({r["request_id"] for r in got}) == 202
    assert sorted((r["request_id"], r["prompt_id"]) for r in got) == sorted(
        (r["request_id"], r["prompt_id"]) for r in single
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["records"]["total"] == 202
    assert manifest["cluster"]["nodes"] == 2 and manifest["cluster"]["cpus"] == 2
    workers = manifest["workers"]
    # one worker on each node, each node's clock measured against this one's (the same clock here: the
    # measured offset is within half the round trip of zero)
    assert sorted(w["node_id"] for w in workers) == sorted(cluster.nodes)
    for w in workers:
        assert w["status"] == "completed" and w["records"] == lines(out / f"records.w{w['index']}.jsonl")
        assert 0 < w["clock_rtt_ms"] < 1000
        assert abs(w["clock_offset_ms"]) <= w["clock_rtt_ms"] / 2 + 0.5

    # the one seeded schedule, from one start, whichever node sent each request
    def schedule(rows: list[dict[str, Any]]) -> list[float]:
        offsets = sorted(r["intended_offset_ms"] for r in rows if r["stage"] == "steady")
        return [o - offsets[0] for o in offsets]

    assert max(abs(a - b) for a, b in zip(schedule(got), schedule(single), strict=True)) < 0.01
    summary = json.loads((out / "summary.json").read_text())["scenarios"]["chat"]
    load = summary["load"]
    # the rate held across the nodes: what was sent kept to the schedule
    assert abs(load["rate_error_vs_schedule_pct"]) < 5, load
    # one summary, exact percentiles over every request of both nodes
    ttft = np.array([r["ttft_ms"] for r in got if r["stage"] == "steady"])
    assert summary["requests"]["ok"] == len(ttft) == 200
    p50, p99 = np.percentile(ttft, [50, 99])
    assert summary["latency_ms"]["ttft"]["p50"] == pytest.approx(p50, abs=1e-6)
    assert summary["latency_ms"]["ttft"]["p99"] == pytest.approx(p99, abs=1e-6)


def test_a_stop_signal_stops_every_worker_on_the_cluster(
    tmp_path: Path, cache_dir: Path, cluster: LoopbackCluster
) -> None:
    out = tmp_path / "run"
    before = set(node_copies())
    with sim_server("--ttft-ms", "5", "--itl-ms", "20") as base:
        args = argv("run chat --requests 100000 --concurrency 4 --warmup 0 --max-tokens 64", base)
        run = start_cli([*args, "--ray", cluster.address, "--out", str(out)], cache_dir, env=env(cache_dir))
        try:
            wait_for(
                lambda: min(lines(out / "records.w0.jsonl"), lines(out / "records.w1.jsonl")) >= 4,
                180,
                "records",
            )
            run.send_signal(signal.SIGINT)
            _, err = run.communicate(timeout=120)
        finally:
            if run.poll() is None:
                run.kill()
    assert run.returncode == 128 + signal.SIGINT, err
    rows = records_of(out)
    assert any(r.get("reason") == "interrupted" for r in rows)  # each worker's in-flight requests kept
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "interrupted"
    assert [w["status"] for w in manifest["workers"]] == ["completed", "completed"]
    assert manifest["records"]["total"] == len(rows) == sum(w["records"] for w in manifest["workers"])
    assert set(node_copies()) <= before  # the nodes' copies of the records are gone, every line is here


def test_a_node_lost_mid_run_is_reported_and_the_records_it_sent_kept(
    tmp_path: Path, cache_dir: Path
) -> None:
    out = tmp_path / "run"
    for lost in start_cluster():
        with sim_server("--ttft-ms", "5", "--itl-ms", "5") as base:
            args = argv("run chat --requests 600 --concurrency 4 --warmup 0 --max-tokens 8", base)
            run = start_cli([*args, "--ray", lost.address, "--out", str(out)], cache_dir, env=env(cache_dir))
            try:
                wait_for(
                    lambda: min(lines(out / "records.w0.jsonl"), lines(out / "records.w1.jsonl")) >= 10,
                    180,
                    "both workers' records",
                )
                # where each worker runs is in the manifest before the load
                placed = json.loads((out / "manifest.json").read_text())["workers"]
                victim = next(w for w in placed if w["node_id"] == lost.nodes[1])
                lost.remove(lost.nodes[1])
                _, err = run.communicate(timeout=300)
            finally:
                if run.poll() is None:
                    run.kill()
    assert run.returncode == 1, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "failed"
    by_index = {w["index"]: w for w in manifest["workers"]}
    dead, other = by_index[victim["index"]], by_index[1 - victim["index"]]
    assert dead["status"] == "died" and other["status"] == "completed"
    assert f"worker {dead['index']} on" in err and "was lost" in err and "records it wrote are kept" in err
    kept = out / f"records.w{dead['index']}.jsonl"
    rows = [json.loads(line) for line in kept.read_text().splitlines()]  # whole lines only
    assert dead["records"] == len(rows) >= 10
    assert other["records"] == 300  # the surviving node finished its whole share
    summary = json.loads((out / "summary.json").read_text())["scenarios"]["chat"]["requests"]
    assert summary["steady"] == len(records_of(out)) == len(rows) + 300
