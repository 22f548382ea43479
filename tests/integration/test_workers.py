"""``run --workers N``: one run's load split across worker processes against the simulator.

One seeded schedule split exactly (every request once, an open loop's arrival times the same as one
process's), one run directory that every reader takes whole, a stop signal that stops every worker, and
a worker killed mid-run reported with its records kept.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import run_cli, sim_server, start_cli, wait_for

pytestmark = pytest.mark.slow


def argv(line: str, base: str) -> list[str]:
    """A command line against the simulator at ``base``, without a progress bar."""
    return [*line.split(), "--backend", "sim", "--base-url", base, "--no-progress"]


def records_of(out: Path) -> list[dict[str, Any]]:
    """Every record of the run directory, from each of its records files."""
    rows = []
    for path in sorted(out.glob("records*.jsonl")):
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


def lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def children(pid: int) -> list[int]:
    """The worker processes of ``pid``: its children started by multiprocessing's spawn."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmd = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and b"spawn_main" in cmd:
            out.append(int(stat.parent.name))
    return sorted(out)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_closed_loop_split_across_workers_sends_every_request_once(tmp_path: Path, cache_dir: Path) -> None:
    with sim_server("--ttft-ms", "5", "--itl-ms", "2") as base:
        common = argv("run chat --requests 120 --concurrency 6 --warmup 3 --max-tokens 4", base)
        split = run_cli([*common, "--workers", "3", "--out", str(tmp_path / "w3")], cache_dir, 300)
        one = run_cli([*common, "--out", str(tmp_path / "w1")], cache_dir, 300)
    assert split.returncode == 0, split.stderr
    assert one.returncode == 0, one.stderr
    assert "load split across 3 worker processes" in split.stderr
    out = tmp_path / "w3"
    assert sorted(p.name for p in out.glob("records*.jsonl")) == [
        "records.jsonl",
        "records.w0.jsonl",
        "records.w1.jsonl",
        "records.w2.jsonl",
    ]
    got, single = records_of(out), records_of(tmp_path / "w1")
    assert len(got) == 123 and all(r["status"] == "ok" for r in got)
    assert len({r["request_id"] for r in got}) == 123
    assert len({r["seq"] for r in got}) == 123
    # the same requests as one process sends: the workload split by index, none twice, none left out
    assert sorted((r["request_id"], r["prompt_id"]) for r in got) == sorted(
        (r["request_id"], r["prompt_id"]) for r in single
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    assert manifest["records"]["total"] == 123
    assert [w["status"] for w in manifest["workers"]] == ["completed"] * 3
    assert sum(w["records"] for w in manifest["workers"]) == 123
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scenarios"]["chat"]["requests"]["ok"] == 120
    assert summary["scenarios"]["chat"]["requests"]["warmup"] == 3
    again = run_cli(["summarize", str(out), "--json"], cache_dir, 120)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["scenarios"]["chat"]["requests"]["ok"] == 120


def test_an_open_loop_split_across_workers_keeps_the_one_schedule(tmp_path: Path, cache_dir: Path) -> None:
    with sim_server("--ttft-ms", "2", "--itl-ms", "1") as base:
        common = argv(
            "run chat --requests 150 --rate 60 --arrival poisson --seed 7 --warmup 0 --max-tokens 2", base
        )
        split = run_cli([*common, "--workers", "2", "--out", str(tmp_path / "w2")], cache_dir, 300)
        one = run_cli([*common, "--out", str(tmp_path / "w1")], cache_dir, 300)
    assert split.returncode == 0, split.stderr
    assert one.returncode == 0, one.stderr

    def schedule(out: Path) -> list[float]:
        offsets = sorted(r["intended_offset_ms"] for r in records_of(out) if r["stage"] == "steady")
        return [o - offsets[0] for o in offsets]

    two, single = schedule(tmp_path / "w2"), schedule(tmp_path / "w1")
    assert len(two) == len(single) == 150
    # the arrival times of one seeded schedule, from one shared start, whichever worker sent each
    assert max(abs(a - b) for a, b in zip(two, single, strict=True)) < 0.01
    got = records_of(tmp_path / "w2")
    by_worker = {0: 0, 1: 0}
    for r in got:
        by_worker[r["seq"] % 2] += 1
    assert by_worker == {0: 75, 1: 75}
    # each request was sent at its due time by whichever worker held it, not one worker behind another
    late = [r["sent_offset_ms"] - r["intended_offset_ms"] for r in got]
    assert sorted(late)[len(late) // 2] < 50, sorted(late)[len(late) // 2]


def test_a_stop_signal_stops_every_worker_and_keeps_their_records(tmp_path: Path, cache_dir: Path) -> None:
    out = tmp_path / "run"
    with sim_server("--ttft-ms", "5", "--itl-ms", "20") as base:
        args = argv("run chat --requests 100000 --concurrency 4 --workers 2 --warmup 0 --max-tokens 64", base)
        args += ["--out", str(out)]
        run = start_cli(args, cache_dir)
        try:
            wait_for(
                lambda: lines(out / "records.w0.jsonl") + lines(out / "records.w1.jsonl") >= 8, 120, "records"
            )
            workers = children(run.pid)
            assert len(workers) == 2, workers
            run.send_signal(signal.SIGTERM)
            _, err = run.communicate(timeout=120)
        finally:
            if run.poll() is None:
                run.kill()
    assert run.returncode == 128 + signal.SIGTERM, err
    deadline = time.monotonic() + 10
    while any(alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in workers)
    rows = records_of(out)
    assert len(rows) >= 8
    assert any(r.get("reason") == "interrupted" for r in rows)  # in-flight requests kept as degraded
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "interrupted"
    assert manifest["records"]["total"] == len(rows)


def test_a_worker_killed_mid_run_is_reported_and_its_records_kept(tmp_path: Path, cache_dir: Path) -> None:
    out = tmp_path / "run"
    with sim_server("--ttft-ms", "5", "--itl-ms", "20") as base:
        args = argv("run chat --requests 300 --concurrency 4 --workers 2 --warmup 0 --max-tokens 8", base)
        args += ["--out", str(out)]
        run = start_cli(args, cache_dir)
        try:
            wait_for(
                lambda: min(lines(out / "records.w0.jsonl"), lines(out / "records.w1.jsonl")) >= 10,
                120,
                "both workers' records",
            )
            workers = children(run.pid)
            assert len(workers) == 2, workers
            os.kill(workers[0], signal.SIGKILL)
            _, err = run.communicate(timeout=300)
        finally:
            if run.poll() is None:
                run.kill()
    assert run.returncode == 1, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "failed"
    by_pid = {w["pid"]: w for w in manifest["workers"]}
    dead, other = by_pid[workers[0]], by_pid[workers[1]]
    assert dead["status"] == "died" and other["status"] == "completed"
    assert f"worker {dead['index']}" in err and "records it wrote are kept" in err
    kept = lines(out / f"records.w{dead['index']}.jsonl")
    assert dead["records"] == kept >= 10
    assert other["records"] == 150  # the survivor finished its whole share
    summary = json.loads((out / "summary.json").read_text())["scenarios"]["chat"]["requests"]
    assert summary["steady"] == len(records_of(out)) == kept + 150


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scraped(url: str) -> dict[str, float]:
    """The run's requests counter and in-flight gauge, summed over their labels, from one scrape."""
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    out = {"ok": 0.0, "in_flight": 0.0, "itl": 0.0}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name.startswith("infermeter_requests_total{") and 'status="ok"' in name:
            out["ok"] += float(value)
        elif name.startswith("infermeter_in_flight_requests{"):
            out["in_flight"] += float(value)
        elif name.startswith("infermeter_itl_seconds_count{"):
            out["itl"] += float(value)
    return out


def test_agent_chains_stay_whole_across_workers_and_one_metrics_endpoint_counts_them_all(
    tmp_path: Path, cache_dir: Path
) -> None:
    out, port = tmp_path / "run", free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    with sim_server("--ttft-ms", "5", "--itl-ms", "5") as base:
        args = argv("run agent_steps --requests 36 --concurrency 4 --workers 2 --max-tokens 4", base)
        args += [
            "--out",
            str(out),
            "--serve-metrics",
            "--metrics-port",
            str(port),
            "--metrics-linger",
            "120s",
        ]
        run = start_cli(args, cache_dir)
        seen: list[dict[str, float]] = []
        try:

            def counted() -> bool:
                with contextlib.suppress(OSError):
                    seen.append(scraped(url))
                return bool(seen) and seen[-1]["ok"] >= 36 and seen[-1]["in_flight"] == 0

            wait_for(counted, 240, "every step record on the one /metrics")
            run.terminate()  # ends the linger
            _, err = run.communicate(timeout=60)
        finally:
            if run.poll() is None:
                run.kill()
    assert "load split across 2 worker processes" in err, err
    summary = json.loads((out / "summary.json").read_text())["scenarios"]["agent_steps"]
    assert summary["requests"]["ok"] == 36
    rows = [r for r in records_of(out) if r["stage"] == "steady"]
    assert len(rows) == 36 and all(r["status"] == "ok" for r in rows)
    # 9 chains of 4 steps: each chain's steps all written by one worker, the chains numbered apart
    by_chain: dict[str, set[int]] = {}
    for path in sorted(out.glob("records.w*.jsonl")):
        worker = int(path.name.split(".")[1][1:])
        for line in path.read_text().splitlines():
            r = json.loads(line)
            if r["stage"] == "steady":
                by_chain.setdefault(r["chain_id"], set()).add(worker)
    assert len(by_chain) == 9 and all(len(w) == 1 for w in by_chain.values())
    chains = [json.loads(x) for p in sorted(out.glob("chains.w*.jsonl")) for x in p.read_text().splitlines()]
    assert sorted(c["chain_id"] for c in chains) == sorted(by_chain)
    assert all(c["status"] == "ok" and c["steps_done"] == 4 for c in chains)
    # one endpoint for both workers' records: exactly the steady ok count, gaps counted, none in flight
    last = seen[-1]
    assert last["ok"] == 36 and last["in_flight"] == 0
    assert last["itl"] == sum(len(r["itl_ms"] or []) for r in rows)
    assert (
        any(0 < s["ok"] < 36 for s in seen) or len(seen) == 1
    )  # counted as the load went, when scraped then
