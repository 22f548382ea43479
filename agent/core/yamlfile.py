"""YAML config files with errors that name the file, line and field: scenarios, studies, daemon configs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError

from agent.core.errors import ConfigError

if TYPE_CHECKING:
    import yaml

__all__ = ["describe_error", "line_of", "read_yaml", "validate"]

M = TypeVar("M", bound=BaseModel)


def describe_error(err: Any) -> str:
    """One pydantic error as ``field 'a.b': message``."""
    field = ".".join(str(x) for x in err["loc"]) or "(top level)"
    return f"field '{field}': {err['msg']}"


def line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the YAML node at ``loc`` (or of its deepest existing parent)."""
    import yaml

    line = node.start_mark.line + 1 if node is not None else None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == key), None)
            if match is None:
                return line
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def read_yaml(path: Path) -> tuple[Any, yaml.Node | None]:
    """The document and its node tree (for line numbers); unreadable or invalid YAML is a ConfigError."""
    import yaml  # only config files need it; a run built in code never does

    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"not UTF-8 text (byte {e.start}): save the file as UTF-8", location=str(path)
        ) from e
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror or e}", location=str(path)) from e
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        _no_duplicate_keys(node, path)
        return yaml.safe_load(text), node
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"invalid YAML: {problem}", location=where) from e


def _no_duplicate_keys(node: yaml.Node | None, path: Path) -> None:
    """A key given twice in one mapping is an error: YAML would quietly keep the last one."""
    import yaml

    stack = [node] if node is not None else []
    while stack:
        current = stack.pop()
        if isinstance(current, yaml.MappingNode):
            seen: dict[object, int] = {}
            for key, value in current.value:
                name = key.value if isinstance(key, yaml.ScalarNode) else None
                if name is not None and name in seen:
                    raise ConfigError(
                        f"key '{name}' is given twice (first on line {seen[name]}); keep one",
                        location=f"{path}:{key.start_mark.line + 1}",
                    )
                if name is not None:
                    seen[name] = key.start_mark.line + 1
                stack.append(value)
        elif isinstance(current, yaml.SequenceNode):
            stack.extend(current.value)


def validate(model: type[M], data: Any, node: yaml.Node | None, path: Path, what: str) -> M:
    """``data`` validated as ``model``; every error in one ConfigError at the first one's line."""
    if not isinstance(data, dict):
        raise ConfigError(f"a {what} must be a YAML mapping", location=f"{path}:1")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        errors = e.errors()
        lines = [describe_error(err) for err in errors]
        if len(errors) > 1:
            lines = [
                f"{text} (line {line_of(node, tuple(err['loc']))})"
                for text, err in zip(lines, errors, strict=True)
            ]
        raise ConfigError(
            "; ".join(lines), location=f"{path}:{line_of(node, tuple(errors[0]['loc']))}"
        ) from e
