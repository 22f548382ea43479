"""Is the client fast and exact enough to trust? infermeter's runner against a raw reference loop.

Both clients run against the simulator on loopback, in the same invocation, each in its own process
pinned to one core (``taskset``) while the simulator has another:

- throughput: 256-token streams with no server delay at concurrency 64 and 256 → chunks/s, requests/s,
  client CPU ms per 1k chunks, and how many streams the simulator really had open at once;
- timing error against the simulator's emission log (TTFT 100 ms, ITL 10 ms, 64 tokens) at concurrency
  1, 64 and 512 → TTFT error mean/p99 and ITL error p99;
- memory: the client's peak PSS on the same workload at concurrency 512, in runs of their own — reading
  ``/proc/self/smaps_rollup`` stalls the process for a millisecond or two each time, which would show up
  as timing error;
- durability: 100,000 short streams (TTFT 5 ms, ITL 2 ms, 4 tokens) at concurrency 64, 256 and 512 →
  the most finished records ever waiting for the writer, the longest time from a request's end to its
  record reaching the operating system, and peak RSS (flat, whatever the run's length).

The raw reference is the least a correct streaming client can do: one shared aiohttp session on uvloop,
one ``perf_counter_ns()`` per socket read, no JSON parsing. ``python benchmarks/client.py`` prints a JSON
report (medians of alternating repetitions); ``--quick`` runs fewer requests once.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Benchmark prompt: tell me about measuring latency."


def _pss_kb() -> int:
    try:
        for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _peak_rss_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class PeakPss:
    """Samples this process's PSS every 50 ms on a thread; the peak in MB from ``stop``."""

    def __init__(self) -> None:
        self.peak = _pss_kb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, _pss_kb())

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return max(self.peak, _pss_kb()) / 1024


# ---- client processes -------------------------------------------------------------------------------


async def raw_client(url: str, concurrency: int, requests: int, tokens: int) -> dict[str, Any]:
    """The reference loop: POST, then one timestamp per socket read; chunks counted by their SSE prefix."""
    import aiohttp

    body = json.dumps(
        {
            "model": "sim",
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    counter = itertools.count()
    times: dict[str, list[int]] = {}
    chunks = 0
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as s:

        async def worker() -> None:
            nonlocal chunks
            while (n := next(counter)) < requests:
                rid = f"raw-{n:07d}"
                stamps: list[int] = []
                headers = {"X-Request-Id": rid}
                async with s.post(f"{url}/v1/chat/completions", data=body, headers=headers) as r:
                    async for data in r.content.iter_any():
                        t = time.perf_counter_ns()
                        k = data.count(b'"content":"')  # text-bearing chunks in this read
                        stamps.extend([t] * k)
                chunks += len(stamps)
                times[rid] = stamps

        t0, c0 = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"wall_s": wall, "cpu_s": cpu, "chunks": chunks, "requests": len(times), "times": times}


#: The synthetic workload the infermeter client sends: seeded lengths cut from the built-in prose with the
#: simulator's own ``/tokenize``, made before the clock starts (this many distinct prompts, cycled).
SYNTHETIC = {"kind": "synthetic", "input_tokens": "64+-16", "seed": 1}
SYNTHETIC_PROMPTS = 1000


def _prompts(kind: str, distinct: int) -> dict[str, Any]:
    if kind == "fixed":
        return {"prompts": [PROMPT]}
    return {"workload": {**SYNTHETIC, "prompts": distinct}}


async def infermeter_client(
    url: str,
    concurrency: int,
    requests: int,
    tokens: int,
    out: Path,
    prompts: str = "synthetic",
    scrape: str | None = None,
    scrape_interval_s: float = 1.0,
) -> dict[str, Any]:
    """The real thing: scenario → runner → openai backend → records written to JSONL.

    With ``scrape``, the server scraper reads that metrics endpoint on its thread while the load runs,
    as a run does beside a vLLM server.
    """
    sys.path.insert(0, str(ROOT))
    from agent.backends import create
    from agent.core.scenario import Scenario
    from agent.run.prompts import prepare_workloads
    from agent.run.runner import RunContext, Runner
    from agent.transport.scrape import Endpoint, ServerScraper
    from exporters.jsonl import JsonlWriter

    sc = Scenario.model_validate(
        {
            "name": "bench",
            **_prompts(prompts, min(requests, SYNTHETIC_PROMPTS)),
            "requests": requests,
            "concurrency": concurrency,
            "warmup": 0,
            "output_tokens": tokens,
            "keep_output_every": 0,
            "timeout": {"first_token_s": 120, "total_s": 300},
        }
    )
    backend = create("openai", {"base_url": url, "model": "sim", "max_connections": concurrency})
    await backend.start()
    t_make = time.perf_counter()
    await prepare_workloads([sc], backend)  # off the clock, as in a real run
    make_s = time.perf_counter() - t_make
    scraper = None
    if scrape:
        scraper = ServerScraper(
            [Endpoint(scrape, True)], out.with_suffix(".scrape.csv"), interval_s=scrape_interval_s
        )
    with JsonlWriter(out) as writer:
        runner = Runner(sc, backend, writer, RunContext("bench"))
        t0, c0 = time.perf_counter(), time.process_time()
        if scraper is not None:
            scraper.start()
        await runner.run()
        if scraper is not None:
            scraper.stop()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    # the peak so far is the run's own (reading the records back below builds objects of its own); the
    # kernel's high-water mark of this process image, not ru_maxrss, which a child inherits from its parent
    run_rss_mb = _peak_rss_mb()
    await backend.close()
    chunks, times = _chunk_times(out, runner.start_ns)
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "chunks": chunks,
        "requests": len(times),
        "times": times,
        "backlog_max": runner.outcome.backlog_max,
        "write_delay_ms_max": runner.outcome.write_delay_ms_max,
        "run_maxrss_mb": run_rss_mb,
        "make_s": make_s,
    }


async def make_only(url: str, count: int) -> dict[str, Any]:
    """Make ``count`` synthetic prompts with the simulator's tokenizer, and nothing else."""
    sys.path.insert(0, str(ROOT))
    from agent.backends import create
    from agent.core.scenario import Scenario
    from agent.run.prompts import make_prompts

    sc = Scenario.model_validate({"name": "make", "requests": count, "warmup": 0, "workload": {**SYNTHETIC}})
    backend = create("openai", {"base_url": url, "model": "sim"})
    await backend.start()
    t0, c0 = time.perf_counter(), time.process_time()
    facts = await make_prompts(sc, backend)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    await backend.close()
    return {
        "prompts": facts["prompts"],
        "exact": facts.get("exact"),
        "counted": facts.get("counted"),
        "wall_s": wall,
        "cpu_s": cpu,
        "prompts_per_s": facts["prompts"] / wall,
    }


def _chunk_times(records: Path, start_ns: int) -> tuple[int, dict[str, list[int]]]:
    """Every chunk's arrival time per request, rebuilt from the records (after the timed run)."""
    times: dict[str, list[int]] = {}
    chunks = 0
    for line in records.read_text().splitlines():
        r = json.loads(line)
        chunks += r["chunks"]
        if r["ttft_ms"] is None:
            continue
        t = start_ns + (r["intended_offset_ms"] + r["ttft_ms"]) * 1e6
        stamps = [int(t)]
        for gap in r["itl_ms"]:
            t += gap * 1e6
            stamps.append(int(t))
        times[r["request_id"]] = stamps
    return chunks, times


def client_main(ns: argparse.Namespace) -> None:
    import uvloop

    pss = PeakPss() if ns.pss else None
    if ns.client == "raw":
        result = uvloop.run(raw_client(ns.url, ns.concurrency, ns.requests, ns.tokens))
    elif ns.client == "make":
        result = uvloop.run(make_only(ns.url, ns.requests))
    else:
        result = uvloop.run(
            infermeter_client(
                ns.url,
                ns.concurrency,
                ns.requests,
                ns.tokens,
                Path(ns.out),
                ns.prompts,
                ns.scrape_url,
                ns.scrape_interval,
            )
        )
    result["peak_pss_mb"] = pss.stop() if pss is not None else None
    result["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(ns.result).write_text(json.dumps(result))


# ---- orchestration ---------------------------------------------------------------------------------


def _pin(core: int | None) -> list[str]:
    if core is None or shutil.which("taskset") is None:
        return []
    return ["taskset", "-c", str(core)]


class Simulator:
    """``infermeter sim-server`` in its own process (pinned), with an emission log."""

    def __init__(self, core: int | None, log: Path, *, ttft: float, itl: float) -> None:
        cmd = [*_pin(core), sys.executable, "-m", "agent.cli", "sim-server", "--port", "0"]
        cmd += ["--ttft-ms", str(ttft), "--itl-ms", str(itl), "--emission-log", str(log)]
        self.log = log
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http"):
            raise RuntimeError("the simulator did not start")

    def emissions(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for line in self.log.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            out[row["request_id"]] = row
        return out

    def close(self) -> None:
        """SIGTERM stops it cleanly, flushing the emission log."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


#: the metrics endpoint infermeter's client scrapes while it runs (``--scrape``), set by ``main``
SCRAPE: dict[str, Any] = {"url": None, "interval": 1.0}


class MetricsEndpoint:
    """A real vLLM exposition (``tests/data``) served as ``/metrics`` by a plain file server (pinned)."""

    def __init__(self, core: int | None, folder: Path) -> None:
        (folder / "metrics").write_text((ROOT / "tests/data/vllm_0.32_metrics.txt").read_text())
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [*_pin(core), sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
        self.proc = subprocess.Popen(cmd, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{port}/metrics"
        for _ in range(100):
            try:
                urllib.request.urlopen(self.url, timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the metrics endpoint did not start")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def run_client(
    kind: str,
    url: str,
    core: int | None,
    c: int,
    n: int,
    tokens: int,
    tmp: Path,
    *,
    pss: bool = False,
    prompts: str = "synthetic",
) -> dict[str, Any]:
    result = tmp / f"{kind}-{c}-{n}.json"
    records = tmp / f"records-{kind}-{c}.jsonl"
    records.unlink(missing_ok=True)  # the writer appends; each run counts only its own records
    cmd = [*_pin(core), sys.executable, __file__, "--client", kind, "--url", url]
    cmd += ["--concurrency", str(c), "--requests", str(n), "--tokens", str(tokens), "--prompts", prompts]
    cmd += ["--out", str(records), "--result", str(result)] + (["--pss"] if pss else [])
    if SCRAPE["url"] and kind == "infermeter":
        cmd += ["--scrape-url", SCRAPE["url"], "--scrape-interval", str(SCRAPE["interval"])]
    subprocess.run(cmd, cwd=ROOT, check=True)
    data: dict[str, Any] = json.loads(result.read_text())
    return data


def against_simulator(
    ns: argparse.Namespace,
    tmp: Path,
    kind: str,
    c: int,
    n: int,
    *,
    tokens: int,
    ttft: float,
    itl: float,
    log: str,
    pss: bool = False,
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """One client run against its own pinned simulator: the client's result and the emission log."""
    sim = Simulator(ns.server_core, tmp / log, ttft=ttft, itl=itl)
    try:
        result = run_client(kind, sim.url, ns.client_core, c, n, tokens, tmp, pss=pss, prompts=ns.prompts)
    finally:
        sim.close()
    return result, sim.emissions()


def _max_open(rows: list[dict[str, Any]]) -> int:
    events = []
    for r in rows:
        if r["emit_ns"]:
            events += [(r["arrival_ns"], 1), (r["emit_ns"][-1], -1)]
    events.sort()
    best = cur = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def _median_rows(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, Any]:
    """Per-key medians over repetitions (None where a repetition had no value)."""
    out: dict[str, Any] = {k: rows[0][k] for k in ("client", "concurrency")}
    for key in keys:
        values = [r[key] for r in rows if r[key] is not None]
        out[key] = statistics.median(values) if values else None
    out["repetitions"] = len(rows)
    return out


def _summarise(rows: list[dict[str, Any]], keys: tuple[str, ...], ratio: str) -> list[dict[str, Any]]:
    """Median row per (client, concurrency) and infermeter's ratio to the raw loop on ``ratio``."""
    out = []
    for c in sorted({r["concurrency"] for r in rows}):
        med = {
            k: _median_rows([r for r in rows if r["client"] == k and r["concurrency"] == c], keys)
            for k in ("raw", "infermeter")
        }
        raw, ours = med["raw"][ratio], med["infermeter"][ratio]
        med["infermeter"][f"{ratio}_vs_raw"] = ours / raw if raw else None
        out += [med["raw"], med["infermeter"]]
    return out


_THROUGHPUT_KEYS = (
    "requests",
    "chunks",
    "chunks_per_s",
    "requests_per_s",
    "cpu_ms_per_1k_chunks",
    "cpu_share_of_core",
    "max_open_streams_at_server",
)


def throughput(ns: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    """Alternating raw/infermeter repetitions per concurrency; medians reported."""
    rows = []
    for c in ns.throughput_concurrency:
        for rep in range(ns.repeat):
            for kind in ("raw", "infermeter"):
                r, emitted = against_simulator(
                    ns, tmp, kind, c, c * ns.rounds, tokens=256, ttft=0, itl=0, log=f"tp-{kind}-{c}-{rep}.log"
                )
                rows.append(
                    {
                        "client": kind,
                        "concurrency": c,
                        "requests": r["requests"],
                        "chunks": r["chunks"],
                        "chunks_per_s": r["chunks"] / r["wall_s"],
                        "requests_per_s": r["requests"] / r["wall_s"],
                        "cpu_ms_per_1k_chunks": r["cpu_s"] * 1000 / (r["chunks"] / 1000),
                        "cpu_share_of_core": r["cpu_s"] / r["wall_s"],
                        "max_open_streams_at_server": _max_open(list(emitted.values())),
                    }
                )
    return _summarise(rows, _THROUGHPUT_KEYS, "chunks_per_s")


_TIMING_KEYS = (
    "requests_matched",
    "ttft_error_ms_mean",
    "ttft_error_ms_p99",
    "itl_error_ms_p99",
)


def timing(ns: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    """Client timestamps against the simulator's emission log; medians over repetitions."""
    rows = []
    for c in ns.timing_concurrency:
        n = max(20, c * 2) if not ns.quick else max(10, c)
        for rep in range(ns.repeat):
            for kind in ("raw", "infermeter"):
                r, emitted = against_simulator(
                    ns, tmp, kind, c, n, tokens=64, ttft=100, itl=10, log=f"tm-{kind}-{c}-{rep}.log"
                )
                ttft_err: list[float] = []
                itl_err: list[float] = []
                for rid, stamps in r["times"].items():
                    e = emitted.get(rid)
                    if e is None or not stamps or len(e["emit_ns"]) != len(stamps):
                        continue
                    ttft_err.append((stamps[0] - e["emit_ns"][0]) / 1e6)
                    pairs = zip(itertools.pairwise(stamps), itertools.pairwise(e["emit_ns"]), strict=True)
                    itl_err += [abs((b - a) - (y - x)) / 1e6 for (a, b), (x, y) in pairs]
                rows.append(
                    {
                        "client": kind,
                        "concurrency": c,
                        "requests_matched": len(ttft_err),
                        "ttft_error_ms_mean": statistics.fmean(ttft_err) if ttft_err else None,
                        "ttft_error_ms_p99": _pct(ttft_err, 99),
                        "itl_error_ms_p99": _pct(itl_err, 99),
                    }
                )
    out = _summarise(rows, _TIMING_KEYS, "ttft_error_ms_p99")
    for row in out:
        if row["client"] == "infermeter":
            raw = next(r for r in out if r["client"] == "raw" and r["concurrency"] == row["concurrency"])
            for key in ("ttft_error_ms_mean", "itl_error_ms_p99"):
                row[f"{key}_vs_raw"] = row[key] / raw[key] if row[key] is not None and raw[key] else None
    return out


def durability(ns: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    """How far the record file trails the load: short streams (TTFT 5 ms, ITL 2 ms, 4 tokens) at the
    highest request rates the client reaches; the most records ever waiting for the writer, the
    longest time from a request's end to its record reaching the operating system, and peak RSS."""
    rows = []
    for c in ns.durability_concurrency:
        n = ns.durability_requests if not ns.quick else 2000
        r, _ = against_simulator(ns, tmp, "infermeter", c, n, tokens=4, ttft=5, itl=2, log=f"dur-{c}.log")
        rows.append(
            {
                "concurrency": c,
                "requests": r["requests"],
                "requests_per_s": r["requests"] / r["wall_s"],
                "backlog_max_records": r["backlog_max"],
                "write_delay_ms_max": r["write_delay_ms_max"],
                "maxrss_mb_during_run": r["run_maxrss_mb"],
            }
        )
    return rows


def memory(ns: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    """Peak PSS of each client on the timing workload, in runs of their own."""
    rows = []
    for c in ns.memory_concurrency:
        n = max(20, c * 2) if not ns.quick else max(10, c)
        for kind in ("raw", "infermeter"):
            r, _ = against_simulator(
                ns, tmp, kind, c, n, tokens=64, ttft=100, itl=10, log=f"mem-{kind}-{c}.log", pss=True
            )
            rows.append({"client": kind, "concurrency": c, "peak_pss_mb": r["peak_pss_mb"]})
    return rows


def workload(ns: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Making ``--make-prompts`` synthetic prompts with the simulator's tokenizer: time, CPU, exactness."""
    sim = Simulator(ns.server_core, tmp / "make.log", ttft=0, itl=0)
    try:
        return run_client("make", sim.url, ns.client_core, 1, ns.make_prompts, 1, tmp)
    finally:
        sim.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--client", choices=["raw", "infermeter", "make"], help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--concurrency", type=int, help=argparse.SUPPRESS)
    p.add_argument("--requests", type=int, help=argparse.SUPPRESS)
    p.add_argument("--tokens", type=int, default=256, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--pss", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--client-core", type=int, default=0)
    p.add_argument("--server-core", type=int, default=1)
    p.add_argument("--rounds", type=int, default=32, help="throughput: requests per stream slot")
    p.add_argument("--repeat", type=int, default=3, help="alternating repetitions; medians are reported")
    p.add_argument("--throughput-concurrency", type=int, nargs="*", default=[64, 256])
    p.add_argument("--timing-concurrency", type=int, nargs="*", default=[1, 64, 512])
    p.add_argument("--memory-concurrency", type=int, nargs="*", default=[512])
    p.add_argument("--durability-concurrency", type=int, nargs="*", default=[64, 256, 512])
    p.add_argument("--durability-requests", type=int, default=100_000)
    p.add_argument(
        "--prompts",
        choices=["synthetic", "fixed"],
        default="synthetic",
        help="infermeter's prompts: a synthetic workload made before the clock (default), or a fixed one",
    )
    p.add_argument("--make-prompts", type=int, default=100_000, help="workload: synthetic prompts to make")
    p.add_argument("--quick", action="store_true")
    p.add_argument(
        "--scrape",
        action="store_true",
        help="infermeter's client scrapes a server metrics endpoint (a real vLLM exposition) while it runs",
    )
    p.add_argument(
        "--scrape-interval", type=float, default=1.0, help="the scrape period, seconds (default 1)"
    )
    p.add_argument("--scrape-url", help=argparse.SUPPRESS)
    ns = p.parse_args()
    if ns.client:
        client_main(ns)
        return
    if ns.quick:
        ns.rounds, ns.repeat = 4, 1
        ns.make_prompts = min(ns.make_prompts, 10_000)
    if (os.cpu_count() or 1) < 2:
        ns.client_core = ns.server_core = None
    with tempfile.TemporaryDirectory(prefix="infermeter-bench-") as d:
        endpoint = MetricsEndpoint(ns.server_core, Path(d)) if ns.scrape else None
        SCRAPE.update(url=endpoint.url if endpoint else None, interval=ns.scrape_interval)
        report = {
            "scrape": {"url": SCRAPE["url"], "interval_s": ns.scrape_interval} if endpoint else None,
            "cores": {"client": ns.client_core, "simulator": ns.server_core},
            "throughput": throughput(ns, Path(d)),
            "timing": timing(ns, Path(d)),
            "memory": memory(ns, Path(d)),
            "durability": durability(ns, Path(d)),
            "workload": workload(ns, Path(d)),
        }
        if endpoint is not None:
            endpoint.close()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
