"""Does the power poller keep its period while the client is saturated, and what does it cost?

The client (runner + openai backend + JSONL records) drives the simulator at concurrency 64 with
256-token streams and no server delay — its event loop is busy all the time — while the poller thread
reads a synthetic GPU source every 100 ms (no GPU on the machines this project is measured on; the
source builds the same sample objects an NVML read does). Reported: the poller's real period p50/p99,
periods longer than 2Δt, the poller thread's own CPU time per second, and the client's chunks/s with
and without the poller.

``python benchmarks/poller.py`` prints a JSON report.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from local_sim import local_sim

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class SyntheticGpu:
    """Two GPUs' readings stamped at read time (what NvmlSource.read returns, minus the driver calls)."""

    name = "synthetic"
    unavailable = None

    def gpus(self) -> list[int]:
        return [0, 1]

    def read(self) -> list[Any]:
        from agent.energy.base import PowerSample

        t = time.perf_counter_ns()
        return [PowerSample(t, g, 150.0 + g, 10_000 * g, 90.0, 9000.0, 24000.0, 60.0, 1500.0) for g in (0, 1)]

    def describe(self) -> dict[str, Any]:
        return {"source": self.name}

    def close(self) -> None:
        return None


async def load(url: str, out: Path, requests: int, meter: Any | None) -> dict[str, float]:
    from agent.backends import create
    from agent.core.scenario import Scenario
    from agent.run.runner import RunContext, Runner
    from exporters.jsonl import JsonlWriter

    sc = Scenario.model_validate(
        {
            "name": "bench",
            "prompts": ["p"],
            "requests": requests,
            "concurrency": 64,
            "warmup": 0,
            "output_tokens": 256,
            "keep_output_every": 0,
        }
    )
    backend = create("openai", {"base_url": url, "model": "sim", "max_connections": 64})
    await backend.start()
    if meter is not None:
        meter.start()
    with JsonlWriter(out) as writer:
        runner = Runner(sc, backend, writer, RunContext("bench", annotator=meter))
        t0 = time.perf_counter()
        await runner.run()
        wall = time.perf_counter() - t0
    if meter is not None:
        meter.stop()
    await backend.close()
    return {"wall_s": wall, "chunks_per_s": requests * 256 / wall}


def main() -> None:
    import uvloop

    from agent.energy.base import Baseline
    from agent.energy.meter import EnergyMeter

    with local_sim() as url, tempfile.TemporaryDirectory(prefix="infermeter-poller-") as d:
        plain = uvloop.run(load(url, Path(d) / "a.jsonl", 4096, None))
        meter = EnergyMeter(SyntheticGpu(), interval_s=0.1, baseline=Baseline(20.0, 1.0, 100))
        polled = uvloop.run(load(url, Path(d) / "b.jsonl", 4096, meter))
        lines = (Path(d) / "b.jsonl").read_text().splitlines()
        qualities = [json.loads(line)["energy_quality"] for line in lines]
    q = meter.poller.quality()
    report = {
        "client_chunks_per_s_without_poller": round(plain["chunks_per_s"]),
        "client_chunks_per_s_with_poller": round(polled["chunks_per_s"]),
        "poller_period_ms_p50": round(q["period_ms_p50"], 3),
        "poller_period_ms_p99": round(q["period_ms_p99"], 3),
        "poller_gaps_over_2x": q["gaps_over_2x"],
        "poller_ticks": q["ticks"],
        "poller_cpu_ms_per_s": round(q["cpu_ms"] / polled["wall_s"], 3),
        "request_windows_by_quality": {k: qualities.count(k) for k in sorted(set(map(str, qualities)))},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
