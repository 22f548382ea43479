"""``infermeter sim-server`` with no delays on a free loopback port, for the benchmarks that need a server."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def local_sim() -> Iterator[str]:
    """The simulator (TTFT and ITL 0) in its own process; yields its base URL, stops it afterwards."""
    sim = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "sim-server", "--port", "0", "--ttft-ms", "0", "--itl-ms", "0"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert sim.stdout is not None
    try:
        yield sim.stdout.readline().strip()
    finally:
        sim.terminate()
        sim.wait(10)
