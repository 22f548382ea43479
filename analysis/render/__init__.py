"""Renderers of typed results, registered by format: ``markdown``, ``console`` and ``json`` for analyses.

Each renderer is a function of an ``AnalysisResult``; each is built from one function per report
section. A new format is one module and one ``register`` call.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from agent.core.errors import UnknownNameError
from analysis.render.console import console_view
from analysis.render.markdown import render_markdown
from analysis.results import AnalysisResult

__all__ = ["RENDERERS", "register", "render"]

#: Renderers of an analysis by format.
RENDERERS: dict[str, Callable[[AnalysisResult], Any]] = {}


def register(fmt: str, fn: Callable[[AnalysisResult], Any]) -> None:
    """Register ``fn`` as the renderer of ``fmt``."""
    RENDERERS[fmt] = fn


def render(result: AnalysisResult, fmt: str) -> Any:
    """``result`` rendered as ``fmt``: text for markdown and json, a rich renderable for console."""
    try:
        fn = RENDERERS[fmt]
    except KeyError:
        raise UnknownNameError("report format", fmt, sorted(RENDERERS)) from None
    return fn(result)


def _json(result: AnalysisResult) -> str:
    return json.dumps(result.dump(), indent=2) + "\n"


register("markdown", render_markdown)
register("console", console_view)
register("json", _json)
