"""Does the open loop hold its rate? Requested vs achieved rate and schedule lag against the simulator.

``infermeter run`` (pinned to one core) drives a pinned ``infermeter sim-server`` on loopback at rising
request rates with constant and Poisson arrivals; each point reads the run's own summary: the rate the
seeded schedule asked for, the rate the client really sent at, and schedule lag p50/p99. Short
responses (4 tokens, no server delay) keep the server out of the way, so what is measured is the client.

``python benchmarks/rate.py`` prints a JSON report; ``--rates`` and ``--seconds`` change the grid.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _pin(core: int) -> list[str]:
    return ["taskset", "-c", str(core)] if shutil.which("taskset") else []


def point(url: str, arrival: str, rate: float, seconds: float, core: int, out: Path) -> dict[str, Any]:
    cmd = [*_pin(core), sys.executable, "-m", "agent.cli", "run", "chat", "--backend", "openai"]
    cmd += ["--base-url", url, "--model", "sim", "--rate", str(rate), "--arrival", arrival]
    cmd += ["--duration", f"{seconds}s", "--warmup", "0", "--max-tokens", "4", "--no-progress"]
    cmd += ["--out", str(out)]
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    scenario = json.loads((out / "summary.json").read_text())["scenarios"]["chat"]
    load = scenario["load"]
    return {
        "arrival": arrival,
        "rate_requested": rate,
        "rate_scheduled": load["rate_scheduled"],
        "rate_achieved": load["rate_achieved"],
        "error_vs_requested_pct": load["rate_error_pct"],
        "error_vs_schedule_pct": load["rate_error_vs_schedule_pct"],
        "lag_p50_ms": load["schedule_lag_ms"]["p50"],
        "lag_p99_ms": load["schedule_lag_ms"]["p99"],
        "trustworthy": load["trustworthy"],
        "requests": scenario["requests"]["steady"],
        "success_rate": scenario["requests"]["success_rate"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rates", type=float, nargs="+", default=[100, 500, 1000])
    p.add_argument("--arrivals", nargs="+", default=["constant", "poisson"])
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--client-core", type=int, default=0)
    p.add_argument("--server-core", type=int, default=1)
    ns = p.parse_args()
    cmd = [*_pin(ns.server_core), sys.executable, "-m", "agent.cli", "sim-server", "--port", "0"]
    server = subprocess.Popen(
        [*cmd, "--ttft-ms", "0", "--itl-ms", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        rows = []
        with tempfile.TemporaryDirectory(prefix="infermeter-rate-") as d:
            for arrival in ns.arrivals:
                for rate in ns.rates:
                    out = Path(d) / f"{arrival}-{rate:g}"
                    rows.append(point(url, arrival, rate, ns.seconds, ns.client_core, out))
    finally:
        server.terminate()
        server.wait(10)
    print(json.dumps({"seconds_per_point": ns.seconds, "points": rows}, indent=2))


if __name__ == "__main__":
    main()
