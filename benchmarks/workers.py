"""How far ``run --workers N`` carries the client past one core, against the simulator on loopback.

For each worker count: 256-token streams with no server delay at a fixed concurrency (chunks/s and
requests/s over the load, from the records' own send and end times), then a timing run against a
simulator with a 100 ms TTFT and 10 ms gaps (how far the recorded TTFT lies above the simulator's own
100 ms, p50 and p99). The simulator runs as its own process, pinned to the last core where there is more
than one; the workers are left to the scheduler. ``python benchmarks/workers.py`` prints a JSON report;
``--workers 1 2 4 8`` chooses the counts (by default the ones the machine has cores for);
``--serve-metrics`` measures the same runs with the one ``/metrics`` served (every record sent to it);
``--ray`` places the workers on Ray's multi-node test cluster on this machine (one node of one CPU per
worker, every record streamed back to the run directory), to measure what the cluster's path costs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from local_sim import ROOT, cores, local_sim


def records(out: Path) -> list[dict[str, Any]]:
    """The steady-state records of every records file of a run."""
    rows = []
    for path in sorted(out.glob("records*.jsonl")):
        with path.open() as fh:
            rows += [r for line in fh if (r := json.loads(line))["stage"] == "steady"]
    return rows


#: extra flags for every run (``--serve-metrics`` adds the endpoint on a free port)
EXTRA: list[str] = []


#: Ray on one machine binds loopback only (for the cluster and for each run that joins it)
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


@contextlib.contextmanager
def ray_cluster(nodes: int) -> Any:
    """Ray's test cluster with ``nodes`` nodes of one CPU each (``tests/ray_cluster.py``); its address."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.ray_cluster", str(nodes)],
        cwd=ROOT,
        env={**os.environ, **RAY_ENV},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        yield json.loads(proc.stdout.readline())["address"]
    finally:
        proc.stdin.close()
        proc.wait(120)


def run(base: str, workers: int, args: list[str], out: Path) -> list[dict[str, Any]]:
    """One ``infermeter run`` against ``base``; its steady records."""
    cmd = [sys.executable, "-m", "agent.cli", "run", "chat", "--backend", "sim", "--base-url", base]
    cmd += ["--workers", str(workers), "--warmup", "0", "--energy", "off", "--no-progress", "--out", str(out)]
    cmd += EXTRA
    env = {**os.environ, **RAY_ENV} if "--ray" in EXTRA else None
    subprocess.run([*cmd, *args], cwd=ROOT, check=True, capture_output=True, timeout=900, env=env)
    return records(out)


def throughput(base: str, workers: int, ns: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Chunks and requests per second over the load, from first send to last end."""
    c = ns.concurrency
    rows = run(
        base,
        workers,
        ["--requests", str(c * ns.rounds), "--concurrency", str(c), "--max-tokens", "256"],
        tmp / f"t{workers}",
    )
    start = min(r["sent_offset_ms"] for r in rows)
    end = max(r["sent_offset_ms"] + r["e2e_ms"] for r in rows)
    span = (end - start) / 1000
    return {
        "chunks_per_s": round(sum(r["chunks"] for r in rows) / span),
        "requests_per_s": round(len(rows) / span, 1),
        "ok": sum(r["status"] == "ok" for r in rows),
    }


def timing(base: str, workers: int, ns: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """How far the recorded TTFT lies above the simulator's own 100 ms."""
    c = ns.timing_concurrency
    rows = run(
        base,
        workers,
        ["--requests", str(c * 8), "--concurrency", str(c), "--max-tokens", "64"],
        tmp / f"l{workers}",
    )
    err = sorted(r["ttft_ms"] - 100.0 for r in rows if r["status"] == "ok")
    return {
        "ttft_error_p50_ms": round(statistics.median(err), 3),
        "ttft_error_p99_ms": round(err[min(len(err) - 1, int(0.99 * len(err)))], 3),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = [n for n in (1, 2, 4, 8) if n == 1 or n <= max(1, cores() - 1)]
    p.add_argument("--workers", type=int, nargs="*", default=default)
    p.add_argument("--concurrency", type=int, default=256, help="throughput: streams in flight")
    p.add_argument("--rounds", type=int, default=16, help="throughput: requests per stream slot")
    p.add_argument("--timing-concurrency", type=int, default=64)
    p.add_argument("--serve-metrics", action="store_true", help="serve /metrics while each run lasts")
    p.add_argument("--ray", action="store_true", help="the workers on Ray's test cluster on this machine")
    ns = p.parse_args()
    if ns.serve_metrics:
        EXTRA.extend(["--serve-metrics", "--metrics-port", "0"])
    report: dict[str, Any] = {
        "cores": cores(),
        "concurrency": ns.concurrency,
        "serve_metrics": ns.serve_metrics,
        "ray": ns.ray,
        "runs": [],
    }
    with (
        ray_cluster(max(ns.workers)) if ns.ray else contextlib.nullcontext() as address,
        tempfile.TemporaryDirectory() as tmp,
        local_sim(pin=True) as fast,
        local_sim("--ttft-ms", "100", "--itl-ms", "10", pin=True) as slow,
    ):
        if address is not None:
            EXTRA.extend(["--ray", address])
        for n in ns.workers:
            row = {"workers": n, **throughput(fast, n, ns, Path(tmp)), **timing(slow, n, ns, Path(tmp))}
            report["runs"].append(row)
            print(json.dumps(row), file=sys.stderr)
    one = report["runs"][0]["chunks_per_s"] if report["runs"] and ns.workers[0] == 1 else None
    for row in report["runs"]:
        if one:
            row["scaling"] = round(row["chunks_per_s"] / (one * row["workers"]), 2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
