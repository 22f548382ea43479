"""``infermeter daemon``: canary probes beside production inference, serving /metrics and /status."""

from __future__ import annotations

import argparse
from pathlib import Path

from agent.cli.common import App, run_loop
from agent.cli.logs import configure_logging
from agent.run.daemon import Daemon
from agent.run.daemon_config import load_daemon_config

NAME = "daemon"
HELP = "probe targets at a low rate forever; serve /metrics and /status"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The config file, and whether only to check it."""
    p.add_argument("--config", type=Path, required=True, help="daemon YAML (targets, probe, sampling)")
    p.add_argument("--check", action="store_true", help="validate the config and exit")


def run(ns: argparse.Namespace, app: App) -> int:
    """Check the config, or run the daemon until SIGTERM with JSON logs."""
    err, settings = app.err, app.settings

    config = load_daemon_config(ns.config)
    if ns.check:  # every target built (backend args, scenario) without contacting any backend
        targets = Daemon(ns.config).build_targets(config)
        err.print(f"{ns.config}: config ok; targets {', '.join(targets)}")
        return 0
    # a daemon's log goes to a collector: JSON, one event per state change (info unless debug is asked)
    level = "debug" if settings.log_level.lower() == "debug" else "info"
    configure_logging(settings.model_copy(update={"log_json": True, "log_level": level}))
    return run_loop(Daemon(ns.config).run())
