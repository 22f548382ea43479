"""Formatting every renderer shares: numbers or a dash, shares, changes, intervals, Markdown tables."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text

from agent.core.text import for_terminal, md_cell
from analysis.results import Distribution, Drift, Interval

__all__ = ["ci", "fmt", "md", "md_table", "oneline", "outputs_moved", "p50", "pct", "share", "term", "two"]

#: Text from a run (labels, model ids, outputs, warnings) placed in Markdown: one line, no HTML, no ``|``.
md = md_cell


def term(text: object, style: str = "") -> Text:
    """Text from a run for the terminal: no markup read into it, no control character let through."""
    return Text(for_terminal(text), style)


def fmt(value: float | None, spec: str = "{:.1f}") -> str:
    """``value`` formatted with ``spec``, or an em dash for a missing figure."""
    return "—" if value is None else spec.format(value)


def two(value: float | None, spec: str = "{:.2f}") -> str:
    """A report figure: two decimals unless told otherwise."""
    return fmt(value, spec)


def p50(stats: Distribution | None) -> float | None:
    """The p50 of a distribution, or None."""
    return None if stats is None else stats.p50


def share(value: float | None) -> str:
    """A 0–1 share as a whole percentage."""
    return "—" if value is None else f"{value * 100:.0f} %"


def pct(value: float | None) -> str:
    """A signed percentage change."""
    return "—" if value is None else f"{value:+.1f} %"


def ci(block: Interval | None, spec: str = "{:.1f}") -> str:
    """``estimate [low, high]``, or a dash."""
    if block is None:
        return "—"
    return f"{spec.format(block.estimate)} [{spec.format(block.low)}, {spec.format(block.high)}]"


def md_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table and the blank line after it; every cell stays one cell, whatever its text."""
    lines = ["| " + " | ".join(map(md_cell, head)) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(map(md_cell, r)) + " |" for r in rows]
    return [*lines, ""]


def oneline(text: str, width: int = 120) -> str:
    """``text`` on one line, cut at ``width`` characters."""
    flat = md_cell(text)
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def outputs_moved(drift: Drift) -> str:
    """How the candidate's outputs compare with the baseline's, in words that match the figures."""
    if drift.drifted:
        return "outputs drifted"
    if drift.identical_rate == 1:
        return "outputs identical"
    return f"outputs close to the baseline ({share(drift.identical_rate)} identical)"
