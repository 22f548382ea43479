"""Does the daemon stay flat? RSS over an accelerated soak of many probes against the simulator.

``infermeter daemon`` probes a local ``sim-server`` (no delays, 8-token answers) with a 1 ms interval,
sampling every 10th response into rotating files; its RSS (``/proc/PID/status``) is read at every
2,000 probes from ``/status``. A daemon that leaks shows RSS rising with the probe count; a flat one
levels off once its bounded structures are full (the exporter's 60-s window holds at most 10,000 rows,
reached after 10,000 probes at this accelerated rate; a real 10-s interval keeps six).

``python benchmarks/daemon_soak.py`` prints a JSON report; ``--probes`` changes the length.

``--scrapers N`` measures instead whether probing keeps its schedule while it is scraped: the daemon
probes every 100 ms; its probe rate is taken over ``--phase-s`` seconds alone, then over as long again
with N threads each fetching ``/metrics`` back to back, whose latencies are reported too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from local_sim import local_sim

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _status(base: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{base}/status", timeout=5) as r:
        data: dict[str, Any] = json.loads(r.read())
    return data


def _scrape_phase(base: str, scrapers: int, seconds: float) -> dict[str, Any]:
    """Probes per second over ``seconds`` while ``scrapers`` threads fetch /metrics without pause."""
    latencies: list[float] = []
    stop = threading.Event()

    def scrape() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            try:
                with urllib.request.urlopen(f"{base}/metrics", timeout=30) as r:
                    r.read()
            except OSError:
                continue
            latencies.append(time.perf_counter() - t)

    threads = [threading.Thread(target=scrape, daemon=True) for _ in range(scrapers)]
    for th in threads:
        th.start()
    start, t0 = _status(base)["targets"]["soak"]["probes"], time.perf_counter()
    time.sleep(seconds)
    end, elapsed = _status(base)["targets"]["soak"]["probes"], time.perf_counter() - t0
    stop.set()
    for th in threads:
        th.join(35)
    lat = sorted(latencies)
    return {
        "scrapers": scrapers,
        "probes_per_s": round((end - start) / elapsed, 2),
        "scrapes": len(lat),
        "scrape_p50_ms": round(lat[len(lat) // 2] * 1000, 1) if lat else None,
        "scrape_p99_ms": round(lat[int(len(lat) * 0.99)] * 1000, 1) if lat else None,
    }


def scraped(ns: argparse.Namespace) -> dict[str, Any]:
    """The daemon's probe rate alone and under ``ns.scrapers`` parallel scrapers."""
    with _stack(interval="100ms") as (base, _, _):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if _status(base)["targets"]["soak"]["probes"] >= 5:
                    break
            except (OSError, KeyError):
                pass
            time.sleep(0.2)
        alone = _scrape_phase(base, 0, ns.phase_s)
        crowd = _scrape_phase(base, ns.scrapers, ns.phase_s)
    return {"probe_interval_ms": 100, "alone": alone, "scraped": crowd}


@contextlib.contextmanager
def _stack(interval: str, sampling: str = "") -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    """A simulator and a daemon probing it every ``interval``; yields its URL, process and folder."""
    port = _free_port()
    with local_sim() as url, tempfile.TemporaryDirectory(prefix="infermeter-soak-") as d:
        config = Path(d) / "daemon.yaml"
        config.write_text(
            f"metrics: {{port: {port}}}\n"
            f"probe: {{interval: {interval}, jitter: 0.0, max_concurrency: 1, timeout: 10s, max_tokens: 8}}\n"
            + (f"sampling: {{{sampling.format(dir=d)}}}\n" if sampling else "")
            + "targets: [{name: soak, backend: openai, scenario: chat,"
            f" args: {{base_url: '{url}', model: sim}}}}]\n"
        )
        daemon = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "daemon", "--config", str(config)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            yield f"http://127.0.0.1:{port}", daemon, Path(d)
        finally:
            daemon.terminate()
            daemon.wait(30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--probes", type=int, default=20_000)
    p.add_argument("--every", type=int, default=2000, help="read RSS every this many probes")
    p.add_argument("--scrapers", type=int, default=0, help="measure probing under this many scrapers")
    p.add_argument("--phase-s", type=float, default=15.0, help="seconds of each scrape-test phase")
    ns = p.parse_args()
    if ns.scrapers:
        print(json.dumps(scraped(ns), indent=2))
        return
    sampling = "every: 10, dir: {dir}/samples, max_bytes: 100000, keep: 3"
    with _stack("1ms", sampling) as (base, daemon, folder):
        points: list[dict[str, float]] = []
        t0 = time.perf_counter()
        mark = ns.every
        deadline = time.monotonic() + 1800
        while mark <= ns.probes and time.monotonic() < deadline:
            try:
                probes = _status(base)["targets"]["soak"]["probes"]
            except (OSError, KeyError):
                time.sleep(0.5)
                continue
            if probes >= mark:
                points.append({"probes": probes, "rss_mb": round(_rss_mb(daemon.pid), 2)})
                mark += ns.every
            time.sleep(0.2)
        status = _status(base)["targets"]["soak"]
        sample_files = sorted(p.name for p in (folder / "samples").glob("*.jsonl"))
    elapsed = time.perf_counter() - t0
    first, last = points[0], points[-1]
    report = {
        "probes": last["probes"],
        "seconds": round(elapsed, 1),
        "probes_per_s": round(last["probes"] / elapsed, 1),
        "rss_mb": points,
        "rss_growth_mb_after_first_point": round(last["rss_mb"] - first["rss_mb"], 2),
        # the metrics window holds up to 10,000 rows (60 s at this accelerated rate); past that, flat
        "rss_growth_mb_second_half": round(last["rss_mb"] - points[len(points) // 2 - 1]["rss_mb"], 2),
        "last_status": status["last"]["status"],
        "sample_files": sample_files,
        "daemon_exit_code": daemon.returncode,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
