"""The composition root: every command registered once, the parser built from them, errors mapped to exits.

A command is a module with ``NAME``, ``HELP`` (and optionally ``DESCRIPTION``), ``add_arguments(parser)``
and ``run(ns, app)``; ``run`` returns the exit status, or a coroutine the app runs on the event loop.
Adding a command is one module and one line in ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import inspect
import signal
from types import ModuleType
from typing import NoReturn

import structlog
from rich.console import Console

from agent import __version__
from agent.cli import (
    analyze,
    calibrate,
    daemon,
    import_trace,
    replay,
    run,
    scenarios,
    serve,
    sim_server,
    study,
    summarize,
    sweep,
)
from agent.cli.common import EXIT_CONFIG, EXIT_FAILED, App, error, run_loop
from agent.cli.logs import configure_logging
from agent.cli.settings import Settings
from agent.core.errors import ConfigError, InfermeterError
from agent.core.redact import remember

__all__ = ["COMMANDS", "main"]

#: Every command, in the order ``--help`` lists them.
COMMANDS: tuple[ModuleType, ...] = (
    scenarios,
    run,
    sweep,
    study,
    calibrate,
    daemon,
    replay,
    import_trace,
    serve,
    sim_server,
    analyze,
    summarize,
)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``error: …`` and exit 2, the way every other bad input ends."""

    def error(self, message: str) -> NoReturn:
        """Say what is wrong in one line (``--help`` shows the usage) and exit 2."""
        self.exit(EXIT_CONFIG, f"error: {self.prog}: {message} (see --help)\n")


def parser() -> argparse.ArgumentParser:
    """The ``infermeter`` parser with one sub-parser per registered command."""
    p = _Parser(prog="infermeter", description="Load-test and measure LLM inference.")
    p.add_argument("--version", action="version", version=f"infermeter {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for command in COMMANDS:
        description = getattr(command, "DESCRIPTION", None)
        cp = sub.add_parser(command.NAME, help=command.HELP, description=description)
        cp.set_defaults(handler=command.run)
        command.add_arguments(cp)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``infermeter`` console script."""
    try:
        ns = parser().parse_args(argv)
    except SystemExit as e:  # --help, --version, or a one-line usage error
        return e.code if isinstance(e.code, int) else EXIT_CONFIG
    settings = Settings()
    remember(settings.openai.api_key)
    configure_logging(settings)
    app = App(settings, Console(stderr=True))
    try:
        status = ns.handler(ns, app)
        return run_loop(status) if inspect.iscoroutine(status) else int(status)
    except ConfigError as e:
        error(app.err, e)
        return EXIT_CONFIG
    except OSError as e:
        error(app.err, f"{e.filename}: {e.strerror}" if e.filename and e.strerror else e)
        return EXIT_FAILED
    except InfermeterError as e:
        error(app.err, e)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except Exception as e:  # noqa: BLE001 - the last net: a bug ends in one masked line, never a traceback
        error(
            app.err, f"internal error: {e.__class__.__name__}: {e} (INFERMETER__LOG_LEVEL=debug logs where)"
        )
        structlog.get_logger(__name__).debug("internal error", exc_info=True)
        return EXIT_FAILED
