"""Scenario overrides are declared once, on the scenario's fields, and the command line is made from them."""

from __future__ import annotations

import argparse

from agent.cli.app import parser
from agent.cli.launching import scenario_for
from agent.core.overrides import overrides_of
from agent.core.scenario import Scenario


def test_each_declared_field_has_one_flag_and_a_help() -> None:
    found = list(overrides_of(Scenario))
    names = [o.flag.name for o in found]
    assert len(names) == len(set(names)) and "--max-tokens" in names and "--slo-ttft-ms" in names
    assert all(o.help for o in found)
    paths = {o.flag.name: o.path for o in found}
    assert paths["--max-tokens"] == ("output_tokens",) and paths["--rate"] == ("load", "rate")


def test_the_command_line_sets_what_the_fields_declare() -> None:
    given = "run chat --rate 7 --max-tokens 9 --duration 2s --slo-ttft-ms 50 --lag-limit-ms 25"
    ns = parser().parse_args(given.split())
    sc = scenario_for("chat", ns)
    assert (sc.load.rate, sc.load.arrival, sc.output_tokens, sc.duration) == (7.0, "poisson", 9, 2.0)
    assert (sc.slo.ttft_ms, sc.load.lag_limit_ms) == (50.0, 25.0)


def test_every_declared_flag_is_on_run_and_sweep() -> None:
    from agent.cli import run, sweep

    declared = {o.flag.name for o in overrides_of(Scenario)}
    for command in (run, sweep):
        p = argparse.ArgumentParser()
        command.add_arguments(p)
        assert declared <= {s for a in p._actions for s in a.option_strings}, command.__name__
