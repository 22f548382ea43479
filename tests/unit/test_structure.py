"""The shape of the house: short functions, every command and load shape registered, none left out."""

from __future__ import annotations

import ast
import pkgutil
from pathlib import Path

import agent.cli
import agent.run.shapes
from agent.cli.app import COMMANDS, parser
from agent.core.scenario import Scenario
from agent.run.shapes import SHAPES, shape_name

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("agent", "analysis", "exporters")
LONGEST_FUNCTION = 60


def test_no_function_in_the_packages_is_over_sixty_lines() -> None:
    long = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    lines = (node.end_lineno or node.lineno) - node.lineno + 1
                    if lines > LONGEST_FUNCTION:
                        long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []


def test_every_command_module_is_registered_and_has_the_command_shape() -> None:
    helpers = {"app", "common", "flags", "launching", "logs", "settings", "__main__"}
    modules = {m.name for m in pkgutil.iter_modules(agent.cli.__path__)} - helpers
    assert modules == {c.__name__.rsplit(".", 1)[1] for c in COMMANDS}
    sub = next(a for a in parser()._actions if a.dest == "command")
    assert sub.choices is not None and list(sub.choices) == [c.NAME for c in COMMANDS]
    for command in COMMANDS:
        assert isinstance(command.HELP, str) and command.HELP
        assert callable(command.add_arguments) and callable(command.run)


def test_every_load_shape_module_registers_and_every_scenario_finds_its_shape() -> None:
    modules = {m.name for m in pkgutil.iter_modules(agent.run.shapes.__path__)} - {"base"}
    assert set(SHAPES) == {"closed", "open", "trace", "chain", "batch", "conversation"}
    assert {fn.__module__.rsplit(".", 1)[1] for fn in SHAPES.values()} == modules
    base = {"name": "s", "prompts": ["hi"], "requests": 4}
    cases = {
        "closed": base,
        "open": {**base, "load": {"arrival": "poisson", "rate": 5.0}},
        "chain": {**base, "agent": {"steps": 2, "tool_results": ["ok"]}},
        "batch": {**base, "batch": {"size": 2}},
        "conversation": {
            "name": "s",
            "requests": 4,
            "workload": {"kind": "dataset", "path": "x.json", "turns": "all"},
        },
    }
    for expected, data in cases.items():
        assert shape_name(Scenario.model_validate(data)) == expected
    assert shape_name(Scenario.model_validate(base), replay=True) == "trace"


def test_no_module_imports_itself_through_others() -> None:
    import grimp

    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    modules = sorted(graph.modules)
    imports = {m: sorted(graph.find_modules_directly_imported_by(m) & graph.modules) for m in modules}
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in imports[module]:
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in modules:
        if module not in state:
            visit(module, [module])
    assert cycles == []
