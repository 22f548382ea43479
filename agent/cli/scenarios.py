"""``infermeter scenarios``: the built-in scenarios in a table."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from agent.cli.common import EXIT_OK, App
from agent.core.errors import ConfigError
from agent.core.scenario import Scenario, list_builtin, load_scenario
from agent.core.workload import DatasetWorkload, Lengths, SharedPrefixWorkload, SyntheticWorkload

NAME = "scenarios"
HELP = "list the built-in scenarios"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """No arguments."""


def run(ns: argparse.Namespace, app: App) -> int:
    """A table of the built-in scenarios; an invalid one is listed with its error."""
    console = Console()
    table = Table(box=None)
    table.add_column("name", no_wrap=True)  # names are what a user types: never cut
    for head in ("workload", "requests", "conc.", "prompt tok", "output tok"):
        table.add_column(head)
    table.add_column("description", ratio=1)
    for path in list_builtin():
        try:
            sc = load_scenario(path)
        except ConfigError as e:
            table.add_row(path.stem, "", "", "", "", "", f"[red]invalid: {e}[/red]")
            continue
        table.add_row(
            sc.name,
            workload_label(sc),
            str(sc.requests or f"{sc.duration:g}s"),
            str(sc.concurrency),
            str(sc.prompt_tokens or _drawn(sc, "input_tokens") or "—"),
            _drawn(sc, "output_tokens") or str(sc.output_tokens),
            sc.description,
        )
    console.print(table)
    console.print(
        "Any scenario takes a workload from flags instead of its prompts: --input-tokens 512+-64 "
        "--output-tokens 128 (synthetic), --prefix-groups 8 --prefix-tokens 512 (shared prefixes), "
        "--dataset FILE [--turns all] (ShareGPT, JSONL, JSON, CSV, Parquet, Hugging Face); "
        "see docs/scenarios.md."
    )
    return EXIT_OK


def workload_label(sc: Scenario) -> str:
    """What a scenario sends, in a few words: its prompt list, or its workload kind and shape."""
    wl = sc.workload
    if isinstance(wl, SyntheticWorkload):
        return f"synthetic ({wl.length_of} length)"
    if isinstance(wl, SharedPrefixWorkload):
        return f"shared prefix {wl.groups}×{wl.prefix_tokens} + {wl.suffix_tokens.label()}"
    if isinstance(wl, DatasetWorkload):
        return f"dataset {Path(wl.path).name} ({'conversations' if wl.turns == 'all' else 'first turns'})"
    if sc.shape != "single":
        return f"{sc.shape} over {len(sc.prompt_list())} prompts"
    return f"{len(sc.prompt_list())} prompts"


def _drawn(sc: Scenario, field: str) -> str | None:
    lengths = getattr(sc.workload, field, None)
    return lengths.label() if isinstance(lengths, Lengths) else None
