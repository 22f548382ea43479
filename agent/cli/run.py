"""``infermeter run``: one scenario, or several at once as labelled tenants of one backend."""

from __future__ import annotations

import argparse

from rich.console import Console

from agent.cli.common import App
from agent.cli.flags import backend_flags, load_flags
from agent.cli.launching import finish, in_flight, scenario_for, start, targets
from agent.core.errors import ConfigError
from agent.run.cluster import RayCluster, connect
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
        default=None,
        metavar="N|auto",
        help="worker processes that share the load, each with its own event loop (auto: one per core "
        "less one, or one per CPU of the --ray cluster; default 1, or auto with --ray)",
    )
    p.add_argument(
        "--ray",
        default=None,
        metavar="ADDRESS",
        help="place the workers on the nodes of the Ray cluster whose head is at HOST:PORT (auto: the "
        "cluster this machine belongs to); records come back to this machine's run directory "
        "(needs pip install 'infermeter[ray]' on every node)",
    )


async def run(ns: argparse.Namespace, app: App) -> int:
    """One stage; several scenarios run at once as labelled tenants of one backend."""
    scenarios = [scenario_for(name, ns) for name in ns.scenario]
    names = [sc.name for sc in scenarios]
    if len(set(names)) != len(names):
        raise ConfigError(f"each tenant needs its own scenario name; got {', '.join(names)}")
    cluster = None
    if ns.ray is not None:
        if len(scenarios) > 1:
            raise ConfigError("--ray splits one scenario; run tenants without it")
        with app.err.status(f"joining the Ray cluster at {ns.ray}"):
            cluster = connect(ns.ray)
        app.err.print(
            f"Ray cluster at {ns.ray}: {cluster.nodes} nodes, {cluster.cpus} CPUs (Ray {cluster.version})"
        )
    workers = worker_count(ns.workers, cluster)
    if workers > 1:
        if len(scenarios) > 1:
            raise ConfigError(f"--workers {workers} splits one scenario; run tenants with --workers 1")
        check_splittable(scenarios[0], workers)
    launch = await start(
        ns,
        app.settings,
        scenarios,
        sum(in_flight(sc) for sc in scenarios),
        app.err,
        workers=workers,
        cluster=cluster,
    )
    result = await launch.run(Stages([StagePlan(None, [Tenant(sc) for sc in scenarios])]))
    with read_columns(launch.out) as cols:
        summary = summarize(cols, targets(scenarios), launch.out)
        Console().print(render_summary(summary))
        return finish(launch, result, summary, app.err, cols)


def worker_count(value: str | None, cluster: RayCluster | None = None) -> int:
    """``--workers``: a count from 1 to 64, or ``auto`` (the default with a cluster)."""
    if value is None:
        value = "auto" if cluster is not None else "1"
    if value == "auto":
        return max(1, min(64, cluster.cpus)) if cluster is not None else auto_workers()
    try:
        n = int(value)
    except ValueError:
        raise ConfigError(f"--workers {value!r}: give a count of processes (1 to 64) or auto") from None
    if not 1 <= n <= 64:
        raise ConfigError(f"--workers {n}: give a count of processes from 1 to 64, or auto")
    return n
