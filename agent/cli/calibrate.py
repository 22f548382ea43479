"""``infermeter calibrate``: idle GPU power measured and stored as the baseline later runs subtract."""

from __future__ import annotations

import argparse
import time

from agent.cli.common import EXIT_FAILED, EXIT_OK, App, seconds
from agent.cli.flags import energy_flags
from agent.cli.launching import baseline_file, energy_plan
from agent.core.manifest import write_json_atomic

NAME = "calibrate"
HELP = "measure idle GPU power and store it as the energy baseline"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """How long to sample, and the energy source."""
    p.add_argument("--seconds", default="30", help="how long to sample idle power (default 30)")
    energy_flags(p)


def run(ns: argparse.Namespace, app: App) -> int:
    """``infermeter calibrate``: measure idle power and store it as the baseline for later runs."""
    span = seconds(ns.seconds, "--seconds")
    err = app.err
    plan = energy_plan(ns, app.settings)
    meter = plan.meter
    if meter.source.unavailable:
        err.print(f"energy: unavailable — {meter.source.unavailable}; nothing to calibrate")
        return EXIT_FAILED
    try:
        with err.status(f"measuring idle power for {span:g} s — keep the GPUs idle"):
            baseline = meter.calibrate(span)
    finally:
        meter.stop()
    path = baseline_file(app.settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"source": meter.source.describe(), "baseline": baseline.to_dict(), "taken_unix_s": time.time()}
    write_json_atomic(path, record)
    err.print(
        f"idle baseline {baseline.mean_w:.1f} W ± {baseline.sd_w:.1f} W over {baseline.n} samples → {path}"
    )
    return EXIT_OK
