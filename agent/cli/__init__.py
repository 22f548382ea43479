"""The app: the ``infermeter`` command line, one module per command, and the one place that wires the rest."""

from __future__ import annotations

import signal

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``infermeter`` console script.

    The app is imported here, not at the top: a Ctrl-C while its modules load (a second or more on a
    busy machine) is then an exit by signal like any other, never a traceback.
    """
    try:
        from agent.cli.app import main as app_main
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    return app_main(argv)
