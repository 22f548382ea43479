"""``infermeter scenarios``: the built-in scenarios in a table."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from agent.cli.common import EXIT_OK, App
from agent.core.errors import ConfigError
from agent.core.scenario import list_builtin, load_scenario

NAME = "scenarios"
HELP = "list the built-in scenarios"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """No arguments."""


def run(ns: argparse.Namespace, app: App) -> int:
    """A table of the built-in scenarios; an invalid one is listed with its error."""
    console = Console()
    table = Table("name", "requests", "conc.", "prompt tok", "output tok", "description", box=None)
    for path in list_builtin():
        try:
            sc = load_scenario(path)
        except ConfigError as e:
            table.add_row(path.stem, "", "", "", "", f"[red]invalid: {e}[/red]")
            continue
        table.add_row(
            sc.name,
            str(sc.requests or f"{sc.duration:g}s"),
            str(sc.concurrency),
            str(sc.prompt_tokens or "—"),
            str(sc.output_tokens),
            sc.description,
        )
    console.print(table)
    return EXIT_OK
