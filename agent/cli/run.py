"""``infermeter run``: one scenario, or several at once as labelled tenants of one backend."""

from __future__ import annotations

import argparse

from rich.console import Console

from agent.cli.common import App
from agent.cli.flags import backend_flags, load_flags
from agent.cli.launching import finish, in_flight, scenario_for, start, targets
from agent.core.errors import ConfigError
from agent.run.profiles import StagePlan, Stages, Tenant
from agent.run.workers import auto_workers, check_splittable
from analysis.columns import read_columns
from analysis.render.summary import render_summary
from analysis.summary import summarize

NAME = "run"
HELP = "run one scenario, or several at once, against a backend"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The scenarios, then the load and backend flags."""
    p.add_argument(
        "scenario", nargs="+", help="built-in scenario name(s) (see `infermeter scenarios`) or YAML path(s)"
    )
    load_flags(p)
    backend_flags(p)
    p.add_argument(
        "--workers",
        default="1",
        metavar="N|auto",
        help="worker processes that share the load, each with its own event loop (auto: one per core "
        "less one; default 1)",
    )


async def run(ns: argparse.Namespace, app: App) -> int:
    """One stage; several scenarios run at once as labelled tenants of one backend."""
    scenarios = [scenario_for(name, ns) for name in ns.scenario]
    names = [sc.name for sc in scenarios]
    if len(set(names)) != len(names):
        raise ConfigError(f"each tenant needs its own scenario name; got {', '.join(names)}")
    workers = worker_count(ns.workers)
    if workers > 1:
        if len(scenarios) > 1:
            raise ConfigError(f"--workers {workers} splits one scenario; run tenants with --workers 1")
        check_splittable(scenarios[0], workers)
    launch = await start(
        ns, app.settings, scenarios, sum(in_flight(sc) for sc in scenarios), app.err, workers=workers
    )
    result = await launch.run(Stages([StagePlan(None, [Tenant(sc) for sc in scenarios])]))
    with read_columns(launch.out) as cols:
        summary = summarize(cols, targets(scenarios), launch.out)
        Console().print(render_summary(summary))
        return finish(launch, result, summary, app.err, cols)


def worker_count(value: str) -> int:
    """``--workers``: a count from 1 to 64, or ``auto``."""
    if value == "auto":
        return auto_workers()
    try:
        n = int(value)
    except ValueError:
        raise ConfigError(f"--workers {value!r}: give a count of processes (1 to 64) or auto") from None
    if not 1 <= n <= 64:
        raise ConfigError(f"--workers {n}: give a count of processes from 1 to 64, or auto")
    return n
