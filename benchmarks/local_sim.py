"""``infermeter sim-server`` on a free loopback port, for the benchmarks that need a server."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cores() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@contextlib.contextmanager
def local_sim(*args: str, pin: bool = False) -> Iterator[str]:
    """The simulator in its own process (TTFT and ITL 0 unless ``args`` say otherwise); yields its base
    URL and stops it afterwards. ``pin`` keeps it on the last core where there are several, so a client
    under test does not share one with it."""
    delays = args or ("--ttft-ms", "0", "--itl-ms", "0")
    cmd = [sys.executable, "-m", "agent.cli", "sim-server", "--port", "0", *delays]
    if pin and cores() > 1 and shutil.which("taskset"):
        cmd = ["taskset", "-c", str(max(os.sched_getaffinity(0))), *cmd]
    sim = subprocess.Popen(
        cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert sim.stdout is not None
    try:
        yield sim.stdout.readline().strip()
    finally:
        sim.terminate()
        sim.wait(10)
