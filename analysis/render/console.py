"""The analysis on the terminal: verdict tables, drift lines, and each run's headline without a baseline."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from agent.core.text import for_terminal
from analysis.render.text import ci, outputs_moved, pct, share, term, two
from analysis.results import AnalysisResult

__all__ = ["SECTIONS", "console_view"]


def verdicts(result: AnalysisResult) -> list[Any]:
    """One table per candidate: every scenario and metric with its verdict, coloured."""
    parts: list[Any] = []
    for label, comp in result.comparisons.items():
        table = Table(title=term(f"{label} vs {result.baseline}"), box=None, pad_edge=False)
        for col in ("scenario", "metric", "baseline p50", "candidate p50", "change", "p (adj.)", "verdict"):
            table.add_column(col, justify="left" if col in ("scenario", "metric", "verdict") else "right")
        for sc, rows in comp.scenarios.items():
            for c in rows:
                style = {"worse": "red", "better": "green"}.get(c.verdict, "")
                table.add_row(
                    term(sc),
                    term(c.metric),
                    two(c.median_baseline),
                    two(c.median_candidate),
                    pct(c.change_pct),
                    two(c.p_adjusted, "{:.3g}"),
                    Text(c.verdict, style),
                )
        parts.append(table)
    return parts


def drift(result: AnalysisResult) -> list[Any]:
    """One line per candidate: whether its outputs moved, and its quality tier per task group."""
    parts: list[Any] = []
    for label, d in (result.quality.drift if result.quality else {}).items():
        tiers = for_terminal(", ".join(f"{task} {t.tier}" for task, t in d.tasks.items() if t.tier))
        style = "red" if d.tier in ("concerning", "unacceptable") else "green"
        moved = outputs_moved(d)
        parts.append(
            Text.assemble(
                (f"quality {for_terminal(label)}: ", "bold"),
                (f"{moved}, ", "yellow") if d.drifted else f"{moved}, ",
                (f"quality tier {d.tier or 'n/a'}", style),
                f" — identical {share(d.identical_rate)}, output ROUGE-L {two(d.output_rouge_l, '{:.3f}')}"
                f" ({tiers})",
            )
        )
    return parts


def headlines(result: AnalysisResult) -> list[Any]:
    """Without a baseline: each run's TTFT and E2E medians with CIs, and its key quality averages."""
    if result.comparisons:
        return []
    parts: list[Any] = []
    for label, perf in result.performance.items():
        for sc, p in perf.items():
            ttft, e2e = p.metrics.get("ttft_ms"), p.metrics.get("e2e_ms")
            parts.append(
                term(
                    f"{label} / {sc}: TTFT p50 {ci(ttft.median_ci if ttft else None)} ms, "
                    f"E2E p50 {ci(e2e.median_ci if e2e else None)} ms"
                )
            )
    for label, tasks in (result.quality.runs if result.quality else {}).items():
        keys = ", ".join(
            f"{task} {two(t.key_average.estimate if t.key_average else None, '{:.3f}')}"
            for task, t in tasks.items()
        )
        parts.append(term(f"quality {label}: key average {keys}"))
    return parts


#: The console view's sections, in order.
SECTIONS: Sequence[Callable[[AnalysisResult], list[Any]]] = (verdicts, drift, headlines)


def console_view(result: AnalysisResult) -> Group:
    """Verdicts and drift tiers for the terminal."""
    return Group(*(part for section in SECTIONS for part in section(result)))
