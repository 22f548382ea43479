"""``infermeter replay``: a recorded trace's requests on the trace's own clock."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from rich.console import Console

from agent.cli.common import App
from agent.cli.flags import backend_flags, override_flags
from agent.cli.launching import finish, scenario_for, start, targets
from agent.core.errors import ConfigError
from agent.core.manifest import TraceInfo
from agent.core.scenario import MAX_IN_FLIGHT
from agent.core.trace import load_trace
from agent.run.profiles import ReplayProfile
from analysis.columns import read_columns
from analysis.render.summary import render_summary
from analysis.summary import summarize

NAME = "replay"
HELP = "replay a recorded trace on its own clock"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The trace and how to replay it, then the backend flags."""
    p.add_argument("trace", type=Path, help="trace file: our JSONL, Azure CSV or Mooncake JSONL")
    p.add_argument("--format", choices=["auto", "jsonl", "azure", "mooncake"], default="auto")
    p.add_argument("--speed", type=float, default=1.0, help="replay this many times faster")
    p.add_argument("--limit", type=int, help="only the first N requests")
    p.add_argument(
        "--scenario", default="chat", help="scenario for endpoint, sampling and timeouts (default chat)"
    )
    override_flags(p, only=frozenset({"--warmup", "--lag-limit-ms"}), defaults={"--warmup": 0})
    backend_flags(p)


async def run(ns: argparse.Namespace, app: App) -> int:
    """Replay a trace's requests at its own pace (times ``--speed``)."""
    items = load_trace(ns.trace, ns.format, ns.limit)
    base = scenario_for(ns.scenario, ns)
    if not ns.speed > 0:
        raise ConfigError("--speed must be positive")
    # the trace bounds the run (its length, on its clock), and its prompt lengths are the whole prompt
    replace = {"name": f"replay-{base.name}", "requests": len(items), "duration": None, "system": None}
    sc = base.derive(base.normalised() | replace, location=f"replay of {ns.trace}")
    offsets = [it.timestamp / ns.speed for it in items]
    launch = await start(ns, app.settings, [sc], MAX_IN_FLIGHT, app.err)  # the trace's clock decides
    trace = launch.manifest.trace = TraceInfo(
        path=str(ns.trace),
        sha256=hashlib.sha256(ns.trace.read_bytes()).hexdigest(),
        format=ns.format,
        requests=len(items),
        span_s=items[-1].timestamp - items[0].timestamp,
        speed=ns.speed,
    )
    corpus = "\n\n".join(p.text for p in base.prompt_list())
    result = await launch.run(ReplayProfile(sc, items, offsets, corpus, ns.trace, trace))
    by_name = targets([sc], trace=True)
    with read_columns(launch.out) as cols:
        summary = summarize(cols, by_name, launch.out)
        Console().print(render_summary(summary))
        return finish(launch, result, summary, app.err, cols)
