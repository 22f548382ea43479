"""``infermeter sweep``: a scenario at rising load, stage by stage, until it saturates; the knee."""

from __future__ import annotations

import argparse
import math

from rich.console import Console

from agent.cli.common import App
from agent.cli.flags import backend_flags, load_flags
from agent.cli.launching import finish, in_flight, scenario_for, start, targets
from agent.core.errors import ConfigError
from agent.core.scenario import Scenario
from agent.run.profiles import SweepProfile
from analysis.columns import read_columns
from analysis.render.summary import render_sweep, server_lines
from analysis.results import SUMMARY_SCHEMA_VERSION, SweepSummary
from analysis.server import server_summary
from analysis.summary import summarize_stages
from analysis.sweep import explain_knee

NAME = "sweep"
HELP = "run a scenario at rising load until it saturates; report the knee"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The scenario, the stages, then the load and backend flags."""
    p.add_argument("scenario", help="built-in scenario name or a YAML path")
    p.add_argument("--over", choices=["rate", "concurrency"], help="what rises (default: concurrency)")
    p.add_argument("--values", help="comma-separated stage loads, e.g. 1,2,4,8")
    p.add_argument("--start", type=float, help="first stage load of a geometric series")
    p.add_argument("--stop", type=float, help="last stage load of a geometric series")
    p.add_argument("--factor", type=float, help="series factor (default 2: doubling)")
    p.add_argument("--stage-requests", type=int, help="requests per stage")
    p.add_argument("--stage-duration", help="time per stage, e.g. 20s")
    p.add_argument("--min-gain", type=float, help="saturated below this throughput gain (default 0.05)")
    p.add_argument("--all-stages", action="store_true", help="run every stage, even past saturation")
    load_flags(p)
    backend_flags(p)


def _sweep_config(ns: argparse.Namespace, sc: Scenario) -> Scenario:
    try:
        values = [float(v) for v in ns.values.split(",")] if ns.values else None
    except ValueError as e:
        raise ConfigError(f"--values expects numbers separated by commas, got {ns.values!r}") from e
    if values is not None and not all(math.isfinite(v) and v > 0 for v in values):
        raise ConfigError(f"--values must be positive numbers, got {ns.values!r}")
    sweep = {
        "over": ns.over,
        "values": values,
        "start": ns.start,
        "stop": ns.stop,
        "factor": ns.factor,
        "stage_requests": ns.stage_requests,
        "stage_duration": ns.stage_duration,
        "min_gain": ns.min_gain,
        "stop_at_saturation": False if ns.all_stages else None,
    }
    sweep = {k: v for k, v in sweep.items() if v is not None}
    if sc.sweep is None and not (values or (ns.start and ns.stop)):
        raise ConfigError("the scenario has no sweep block; give --values or --start and --stop")
    base = sc.sweep.model_dump() if sc.sweep is not None else {}
    if values is not None:
        base.update(start=None, stop=None)
    return sc.with_overrides(sweep={**base, **sweep})


async def run(ns: argparse.Namespace, app: App) -> int:
    """Stages of rising load; stop at saturation; print the curve and the knee."""
    sc = _sweep_config(ns, scenario_for(ns.scenario, ns))
    assert sc.sweep is not None
    sw = sc.sweep
    profile = SweepProfile(sc, targets([sc]))
    most = max(in_flight(p.tenants[0].scenario) for p in profile.planned())
    launch = await start(ns, app.settings, [sc], most, app.err)
    launch.manifest.sweep = sw.model_dump(mode="json")
    result = await launch.run(profile)
    curve = profile.curve()
    with read_columns(launch.out) as cols:
        stages = summarize_stages(cols, profile.targets)
        server = server_summary(launch.out, cols.rows())
        explain_knee(curve, server)
        summary = SweepSummary(
            schema_version=SUMMARY_SCHEMA_VERSION, sweep=curve, stages=stages, server=server
        )
        Console().print(render_sweep(curve, sw.over, sc.slo.percentile))
        if server is not None:
            Console().print("\n".join(server_lines(server)), highlight=False)
        return finish(launch, result, summary, app.err, cols)
