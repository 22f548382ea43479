"""Scenario fields the command line may override, each declared once, on the field itself.

A field carries a ``Flag`` in its annotation (``Annotated[int, Flag("--requests", "…")]``); the
command line's flags are made from those declarations (``overrides_of``), and the values given come
back as the nested dict ``Scenario.with_overrides`` takes (``Override.value`` per flag). Its type, its
choices and its help (when the flag gives none, the field's description) come from the field.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, BeforeValidator
from pydantic.fields import FieldInfo

from agent.core.durations import parse_duration

__all__ = ["Flag", "Override", "overrides_of"]


@dataclass(frozen=True, slots=True)
class Flag:
    """The command-line flag that overrides a scenario field."""

    #: ``--requests``
    name: str
    #: the flag's help; the field's description when None
    help: str | None = None

    @property
    def dest(self) -> str:
        """The flag's attribute on the parsed command line."""
        return self.name.removeprefix("--").replace("-", "_")


@dataclass(frozen=True, slots=True)
class Override:
    """One overridable field: where it sits in the scenario, its flag, and what it accepts."""

    #: the field's path from the scenario, ``("load", "rate")``
    path: tuple[str, ...]
    flag: Flag
    field: FieldInfo

    @property
    def help(self) -> str | None:
        """The flag's help."""
        return self.flag.help or self.field.description

    @property
    def is_duration(self) -> bool:
        """Whether the field reads ``30s``, ``500ms`` and the like."""
        return any(isinstance(m, BeforeValidator) and m.func is parse_duration for m in self.field.metadata)

    def kind(self) -> tuple[type | None, list[str] | None]:
        """(argparse type, choices) from the field's annotation: a number, a choice or text."""
        if self.is_duration:
            return None, None
        base: Any = self.field.annotation
        if typing.get_origin(base) is not Literal:  # ``int | None`` is an int that may be left out
            base = next((a for a in typing.get_args(base) if a is not type(None)), base)
        if typing.get_origin(base) is Literal:
            return None, [str(c) for c in typing.get_args(base)]
        return (base if base in (int, float) else None), None  # text is parsed by the field itself


def _model(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds, when it holds exactly one (``Load``, not a union of workloads)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        models = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(models) == 1:
            return _model(models[0])
    return None


def overrides_of(model: type[BaseModel], path: tuple[str, ...] = ()) -> Iterator[Override]:
    """Every field of ``model`` and of the blocks inside it that declares a ``Flag``, in field order."""
    for name, field in model.model_fields.items():
        flag = next((m for m in field.metadata if isinstance(m, Flag)), None)
        if flag is not None:
            yield Override((*path, name), flag, field)
        inner = _model(field.annotation)
        if inner is not None:
            yield from overrides_of(inner, (*path, name))
