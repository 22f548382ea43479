"""A study for people: ``report.md`` section by section, and the console's answer: which variant, and why."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from agent.core.text import for_terminal
from analysis.render.text import fmt, md, md_table, pct, term, two
from analysis.results import DecisionRow, EquivalenceRow, StudyResult

__all__ = [
    "DECISION_HEAD",
    "QUALITY_HEAD",
    "SECTIONS",
    "decision_cells",
    "quality_rows",
    "study_console",
    "study_markdown",
]

_ORDER = {
    "interleaved": "interleaved (a seeded shuffle of the cells: drift over time spreads over every variant)",
    "blocked": "blocked (each variant's cells together: cheaper to start, but time drift can pass for a "
    "difference between variants)",
}


def header(r: StudyResult) -> list[str]:
    """What the study is and how it was run."""
    done = sum(c.status == "completed" for c in r.cells)
    return [
        f"# Study: {md(r.name)}",
        "",
        *([r.description, ""] if r.description else []),
        f"{len(r.variants)} variants × {len({c.scenario for c in r.cells})} scenarios × {r.repetitions} "
        f"repetitions; {done} of {len(r.cells)} cells completed. Order: {_ORDER.get(r.order, r.order)}, "
        f"seed {r.seed}. Baseline: **{md(r.baseline)}**. α = {r.alpha}; equivalence margin "
        f"±{r.margin_pct:g} % of the baseline's mean. Created {r.created_at}.",
        "",
    ]


def variants(r: StudyResult) -> list[str]:
    """Each variant: backend, model, labels and axes, what its runs reported, and how it was made."""
    rows = []
    for v in r.variants:
        facts = v.facts
        quant = _precision(facts) or v.labels.get("quant")
        engine = facts.get("engine") or facts.get("backend") or v.backend
        labels = ", ".join(f"{k}={val}" for k, val in {**v.labels, **v.axis}.items()) or "—"
        rows.append(
            [v.name, engine, v.model or facts.get("model") or "—", str(quant or "—"), labels, v.description]
        )
    return [
        "## Variants",
        *md_table(["variant", "backend", "model", "quantization", "labels", "what it is"], rows),
    ]


def _precision(facts: dict[str, Any]) -> str | None:
    """How the weights were computed with: the file's quantisation, or the dtype it was loaded into."""
    source = (facts.get("model_facts") or {}).get("quantization")
    quant = facts.get("quantization") or facts.get("quantisation")
    if facts.get("dtype"):  # loaded in-process: the dtype the weights were turned into
        return f"{facts['dtype']} (from {source})" if source else str(facts["dtype"])
    return quant or source


def recommendations(r: StudyResult) -> list[str]:
    """The answer first: which variant for each scenario, and why."""
    out = ["## Recommendation"]
    out += [f"- **{md(rec.scenario)}**: {md(rec.reason)}" for rec in r.recommendations]
    return [*out, ""]


#: The decision matrix's columns, shared by every renderer of it.
DECISION_HEAD = (
    "variant",
    "output tok/s",
    "E2E p95 ms",
    "TTFT p50 ms",
    "success (worst cell)",
    "$/1M output",
    "J/token",
    "quality vs baseline",
)


def quality_cell(d: DecisionRow, baseline: str) -> str:
    """The tier against the baseline with the deltas it came from, e.g. ``acceptable (gen -5.7 %)``."""
    if d.variant == baseline:
        return "baseline"
    if d.tier is None:  # no references: how alike the outputs are still says something
        same = f" (identical outputs {d.identical_rate:.0%})" if d.identical_rate is not None else ""
        return "not graded" + same
    deltas = []
    if d.benchmark_delta_points is not None:
        deltas.append(f"bench {d.benchmark_delta_points:+.1f} pt")
    if d.generation_delta_pct is not None:
        deltas.append(f"gen {d.generation_delta_pct:+.1f} %")
    return d.tier + (f" ({', '.join(deltas)})" if deltas else "")


def decision_cells(d: DecisionRow, baseline: str) -> list[str]:
    """One variant's row of the decision matrix, formatted."""
    quality = quality_cell(d, baseline)
    return [
        d.variant,
        two(d.output_tok_s, "{:.1f}"),
        two(d.e2e_p95_ms, "{:.1f}"),
        two(d.ttft_p50_ms, "{:.1f}"),
        two(d.success_rate * 100 if d.success_rate is not None else None, "{:.0f} %"),
        two(d.usd_per_1m_output_tokens, "${:.2f}"),
        two(d.j_per_token, "{:.3f}"),
        quality + (f", KL {d.kl_mean:.4f}" if d.kl_mean is not None else ""),
    ]


def decision(r: StudyResult) -> list[str]:
    """The decision matrix, one table per scenario (the baseline in bold)."""
    out = ["## Decision matrix", ""]
    for scenario in dict.fromkeys(d.scenario for d in r.decision):
        rows = [decision_cells(d, r.baseline) for d in r.decision if d.scenario == scenario]
        for row in rows:
            row[0] = f"**{row[0]}**" if row[0] == r.baseline else row[0]
        out += [f"### {md(scenario)}", *md_table(DECISION_HEAD, rows)]
    return out


QUALITY_HEAD = ("variant", "task", "n", "tier", "benchmark Δ pt", "generation Δ %", "ROUGE-L to baseline")


def quality_rows(r: StudyResult, scenario: str) -> list[list[str]]:
    """Each graded variant's quality per task group on one scenario, against the baseline."""
    return [
        [
            d.variant,
            task,
            str(t.n),
            t.tier or "—",
            two(t.benchmark_delta_points, "{:+.1f}"),
            two(t.generation_delta_pct, "{:+.1f}"),
            two(t.similarity_rouge_l, "{:.2f}"),
        ]
        for d in r.decision
        if d.scenario == scenario and d.variant != r.baseline
        for task, t in d.quality_by_task.items()
    ]


def quality(r: StudyResult) -> list[str]:
    """Quality against the baseline per task group: the tier is the worse of the two deltas."""
    scenarios = [sc for sc in dict.fromkeys(d.scenario for d in r.decision) if quality_rows(r, sc)]
    if not scenarios:
        return []
    sem = f"SemScore model: {r.semscore_model}." if r.semscore_model else "SemScore was not used."
    out = [
        "## Quality against the baseline",
        "Each kept output is scored against its reference; a task group's benchmark delta is in points of "
        "accuracy, its generation delta the relative change of its key scores, and the tier is the worse "
        f"of the two (the variant's tier is its worst group's). {sem}",
        "",
    ]
    for scenario in scenarios:
        out += [f"### {md(scenario)}", *md_table(QUALITY_HEAD, quality_rows(r, scenario))]
    return out


def equivalence(r: StudyResult) -> list[str]:
    """Each variant against the baseline per scenario and metric: tests, effect, TOST and the verdict."""
    if not r.equivalence:
        return []
    counts = Counter(row.verdict for row in r.equivalence)
    out = [
        "## Equivalence against the baseline",
        "Repetitions are the unit (one value per cell). Welch's t and Mann–Whitney U, Holm-adjusted across "
        f"every comparison; TOST within ±{r.margin_pct:g} %. "
        + ", ".join(f"{n} {v}" for v, n in sorted(counts.items()))
        + ".",
        "",
    ]
    head = ["metric", "variant", "baseline mean", "variant mean", "change", "p (Welch, adj.)", "d", "TOST p"]
    for scenario in dict.fromkeys(row.scenario for row in r.equivalence):
        out.append(f"### {md(scenario)}")
        rows = [
            [
                row.metric,
                row.variant,
                two(row.mean_baseline),
                two(row.mean_candidate),
                pct(row.change_pct),
                two(row.p_adjusted, "{:.3g}"),
                two(row.cohens_d),
                two(row.p_tost, "{:.3g}"),
                _verdict(row),
            ]
            for row in r.equivalence
            if row.scenario == scenario
        ]
        out += md_table([*head, "verdict"], rows)
    return out


def _verdict(row: EquivalenceRow) -> str:
    mde = f" (MDE {row.mde:.3g})" if row.verdict == "inconclusive" and row.mde else ""
    return f"**{row.verdict}**{mde}"


def anova(r: StudyResult) -> list[str]:
    """One-way ANOVA across every variant."""
    if not r.anova:
        return []
    rows = [[a.scenario, a.metric, f"{a.f:.2f}", f"{a.p:.3g}"] for a in r.anova]
    return [
        "One-way ANOVA across the variants (per-cell values):",
        *md_table(["scenario", "metric", "F", "p"], rows),
    ]


def scaling(r: StudyResult) -> list[str]:
    """Log-log fits against each numeric axis of the variants."""
    if not r.scaling:
        return []
    rows = []
    for s in r.scaling:
        low, high = s.fit.slope_ci
        verdict = "actionable" if s.fit.actionable else "not actionable"
        slope = f"{s.fit.slope:.3f} [{low:.3f}, {high:.3f}]"
        rows.append([s.axis, s.scenario, s.metric, slope, f"{s.fit.r2:.2f}", str(s.fit.n), verdict])
    head = ["axis", "scenario", "figure", "elasticity [95 % CI]", "R²", "cells", "verdict"]
    return [
        "## Scaling",
        "log(figure) against log(axis): a slope of 1 means the figure grows in proportion. Actionable only "
        "when R² ≥ 0.2 and the interval excludes 0.",
        "",
        *md_table(head, rows),
    ]


def cells(r: StudyResult) -> list[str]:
    """Every cell with its status and records."""
    rows = [
        [c.name, c.status + (f": {c.detail}" if c.detail else ""), str(c.records), str(c.ok)] for c in r.cells
    ]
    return ["## Cells", *md_table(["cell", "status", "records", "ok"], rows)]


#: The report's sections, in order.
SECTIONS: Sequence[Callable[[StudyResult], list[str]]] = (
    header,
    recommendations,
    variants,
    decision,
    quality,
    equivalence,
    anova,
    scaling,
    cells,
)


def study_markdown(result: StudyResult) -> str:
    """The whole study report as Markdown."""
    return "\n".join(line for section in SECTIONS for line in section(result)) + "\n"


def study_console(result: StudyResult) -> Group:
    """The recommendation per scenario and the decision matrix, for the terminal."""
    parts: list[Any] = [
        Text.assemble(("recommendation ", "bold"), for_terminal(f"{rec.scenario}: {rec.reason}"))
        for rec in result.recommendations
    ]
    table = Table(title=term(f"study {result.name}"), box=None, pad_edge=False)
    for col in ("scenario", "variant", "tok/s", "E2E p95", "$/1M", "tier"):
        table.add_column(col, justify="left" if col in ("scenario", "variant", "tier") else "right")
    for d in result.decision:
        tier = quality_cell(d, result.baseline)
        cost = fmt(d.usd_per_1m_output_tokens, "{:.2f}")
        table.add_row(
            term(d.scenario), term(d.variant), fmt(d.output_tok_s), fmt(d.e2e_p95_ms), cost, term(tier)
        )
    return Group(table, *parts)
