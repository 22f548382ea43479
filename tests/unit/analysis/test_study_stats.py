"""A study's analyses against hand-computed values, with scipy as the reference."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.stats as sps

from agent.core.study import Study
from analysis.inference import holm, tost
from analysis.study import analyze_study
from analysis.summary import summarize
from tests.unit.analysis.test_summary import rec

#: per variant, the E2E level of each repetition (ms): b is clearly slower, c within 1 % of a
LEVELS = {
    "a": [100.0, 102.0, 98.0, 101.0],
    "b": [130.0, 128.0, 133.0, 131.0],
    "c": [100.5, 101.5, 99.0, 100.0],
}
AXIS = {"a": 1.0, "b": 2.0, "c": 4.0}


def study(**extra: object) -> Study:
    data = {
        "name": "t",
        "baseline": "a",
        "variants": {v: {"backend": "sim", "axis": {"params_m": AXIS[v]}} for v in LEVELS},
        "scenarios": ["chat"],
        "repetitions": 4,
        "usd_per_hour": 2.0,
        "equivalence": {"margin_pct": 5, "metrics": ["e2e_ms"]},
        **extra,
    }
    return Study.model_validate(data)


def write_cells(root: Path) -> None:
    for variant, levels in LEVELS.items():
        for rep, level in enumerate(levels, start=1):
            folder = root / "cells" / f"{variant}--chat--r{rep}"
            folder.mkdir(parents=True)
            records = [rec(i, e2e=level + i % 3 - 1, ttft=level / 10, output_tokens=30) for i in range(9)]
            (folder / "records.jsonl").write_text("\n".join(r.model_dump_json() for r in records) + "\n")
            (folder / "summary.json").write_text(json.dumps(summarize(records).dump()))
            manifest = {"status": "completed", "scenario": {"name": "chat", "normalised": {}}, "backend": {}}
            (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> object:
    root = tmp_path_factory.mktemp("study")
    write_cells(root)
    return analyze_study(study(), root)


def test_tost_is_two_one_sided_welch_tests() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(100, 2, 8), rng.normal(100.5, 2, 6)
    margin = 5.0
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    diff = b.mean() - a.mean()
    by_hand = max(sps.t.sf((diff + margin) / se, df), sps.t.cdf((diff - margin) / se, df))
    assert tost(a, b, margin) == pytest.approx(by_hand, rel=1e-9)
    assert tost(a, b + 50, margin) > 0.99  # far outside the margin
    assert tost(a[:1], b, margin) is None


def test_each_variant_against_the_baseline_uses_one_value_per_repetition(result: object) -> None:
    rows = {(r.variant, r.metric): r for r in result.equivalence}  # type: ignore[attr-defined]
    # each cell's value is the median of its requests' E2E, which is the cell's level here
    a, b, c = (np.array(LEVELS[v]) for v in "abc")
    row_b, row_c = rows[("b", "e2e_ms")], rows[("c", "e2e_ms")]
    assert row_b.n_baseline == row_b.n_candidate == 4
    assert row_b.mean_candidate == pytest.approx(b.mean())
    assert row_b.p_welch == pytest.approx(sps.ttest_ind(b, a, equal_var=False).pvalue)
    assert row_b.p_mann_whitney == pytest.approx(sps.mannwhitneyu(b, a, alternative="two-sided").pvalue)
    pooled = math.sqrt(((a.size - 1) * a.var(ddof=1) + (b.size - 1) * b.var(ddof=1)) / (a.size + b.size - 2))
    assert row_b.cohens_d == pytest.approx((b.mean() - a.mean()) / pooled)
    assert row_c.margin == pytest.approx(a.mean() * 0.05)
    assert row_c.p_tost == pytest.approx(tost(a, c, a.mean() * 0.05))
    welch = [r.p_welch for r in result.equivalence]  # type: ignore[attr-defined]
    assert [r.p_adjusted for r in result.equivalence] == pytest.approx(holm(welch))  # type: ignore[attr-defined]
    assert row_b.verdict == "different" and row_c.verdict == "equivalent"


def test_the_anova_runs_across_every_variant(result: object) -> None:
    test = next(t for t in result.anova if t.metric == "e2e_ms")  # type: ignore[attr-defined]
    reference = sps.f_oneway(*(LEVELS[v] for v in "abc"))
    assert test.f == pytest.approx(reference.statistic) and test.p == pytest.approx(reference.pvalue)


def test_the_recommendation_is_the_cheapest_variant_and_says_why(result: object) -> None:
    decision = {d.variant: d for d in result.decision}  # type: ignore[attr-defined]
    for d in decision.values():  # $/1M output tokens = 1e6 / tok/s / 3600 × $/h
        assert d.usd_per_1m_output_tokens == pytest.approx(1e6 / d.output_tok_s / 3600 * 2.0)
    cheapest = min(decision.values(), key=lambda d: d.usd_per_1m_output_tokens)
    assert cheapest.variant == "c"  # by 0.0002 % in output tok/s: a lead on paper only
    verdicts = {
        e.variant: e.verdict
        for e in result.equivalence  # type: ignore[attr-defined]
        if e.metric == "output_tok_s"
    }
    assert verdicts["c"] == "equivalent"
    (rec_,) = result.recommendations  # type: ignore[attr-defined]
    assert rec_.variant == "a" and "c leads only on paper (cheapest at $1.85" in rec_.reason
    assert "equivalent to the baseline's within ±5 %" in rec_.reason


def test_a_clear_lead_is_recommended(tmp_path: Path) -> None:
    write_cells(tmp_path)
    priced = study(
        variants={
            "a": {"backend": "sim", "usd_per_hour": 4.0},
            "b": {"backend": "sim"},
            "c": {"backend": "sim", "usd_per_hour": 4.0},
        }
    )
    (rec_,) = analyze_study(priced, tmp_path).recommendations
    assert rec_.variant == "b" and rec_.reason.startswith("b: cheapest at $")
    assert "quality not graded" in rec_.reason


def test_scaling_is_a_log_log_fit_over_every_cell(result: object) -> None:
    row = next(s for s in result.scaling if s.metric == "e2e_ms")  # type: ignore[attr-defined]
    xs = [math.log(AXIS[v]) for v in LEVELS for _ in LEVELS[v]]
    ys = [math.log(level) for v in LEVELS for level in LEVELS[v]]
    reference = sps.linregress(xs, ys)
    assert row.axis == "params_m" and row.fit.n == 12
    assert row.fit.slope == pytest.approx(reference.slope) and row.fit.r2 == pytest.approx(
        reference.rvalue**2
    )


def test_missing_cells_are_reported_not_invented(tmp_path: Path) -> None:
    out = analyze_study(study(), tmp_path)
    assert {c.status for c in out.cells} == {"missing"}
    assert all(r.verdict == "too few repetitions" for r in out.equivalence)
    assert out.recommendations[0].variant is None


def test_the_report_leads_with_the_answer_and_every_table_is_whole(result: object) -> None:
    from analysis.render.html import study_html
    from analysis.render.study import DECISION_HEAD, study_markdown

    report = study_markdown(result)  # type: ignore[arg-type]
    headings = [line for line in report.splitlines() if line.startswith("## ")]
    assert headings[:3] == ["## Recommendation", "## Variants", "## Decision matrix"]
    matrix = report.split("## Decision matrix", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in matrix.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 3 and all(row.count("|") == len(DECISION_HEAD) + 1 for row in rows)
    page = study_html(result)  # type: ignore[arg-type]
    assert "study-throughput" in page and "study-cells-e2e_ms" in page and page.count("<svg") >= 3


#: a graded study: four classification prompts (exact match) and two open answers (ROUGE-L)
PROMPTS = [
    *({"id": f"c{i}", "task": "classification", "reference": "yes"} for i in range(4)),
    *({"id": f"q{i}", "task": "qa", "reference": "the cat sat on the mat"} for i in range(2)),
]
#: what each variant answers: b misses one classification of four and shortens the answers; c is a
#: word-for-word copy of the baseline
ANSWERS = {
    "a": {
        **{f"c{i}": "yes" for i in range(4)},
        "q0": "the cat sat on the mat",
        "q1": "the cat sat on the mat",
    },
    "b": {"c0": "no", **{f"c{i}": "yes" for i in range(1, 4)}, "q0": "the cat sat", "q1": "the cat sat"},
}
ANSWERS["c"] = dict(ANSWERS["a"])


@pytest.fixture(scope="module")
def graded(tmp_path_factory: pytest.TempPathFactory) -> object:
    root = tmp_path_factory.mktemp("graded")
    for variant, answers in ANSWERS.items():
        for rep in (1, 2):
            folder = root / "cells" / f"{variant}--chat--r{rep}"
            folder.mkdir(parents=True)
            records = [
                rec(i, e2e=100.0 + i, ttft=10.0, prompt_id=p["id"], output_text=answers[p["id"]])
                for i, p in enumerate(PROMPTS)
            ]
            (folder / "records.jsonl").write_text("\n".join(r.model_dump_json() for r in records) + "\n")
            (folder / "summary.json").write_text(json.dumps(summarize(records).dump()))
            scenario = {"name": "chat", "normalised": {"prompts": PROMPTS}}
            manifest = {"status": "completed", "scenario": scenario, "backend": {}}
            (folder / "manifest.json").write_text(json.dumps(manifest))
    return analyze_study(study(repetitions=2), root)


def test_quality_tiers_come_from_scored_outputs(graded: object) -> None:
    from rouge_score import rouge_scorer

    rows = {d.variant: d for d in graded.decision}  # type: ignore[attr-defined]
    b, c = rows["b"], rows["c"]
    # classification: accuracy 3/4 against 4/4 is -25 points, which is past the last bound (-10)
    assert b.quality_by_task["classification"].benchmark_delta_points == pytest.approx(-25.0)
    assert b.quality_by_task["classification"].tier == "unacceptable"
    # qa: the key score is ROUGE-L (SemScore off); the library's F-measure is the reference
    short = rouge_scorer.RougeScorer(["rougeL"]).score("the cat sat on the mat", "the cat sat")["rougeL"]
    assert b.quality_by_task["qa"].generation_delta_pct == pytest.approx((short.fmeasure - 1.0) * 100)
    assert b.benchmark_delta_points == pytest.approx(-25.0) and b.tier == "unacceptable"
    assert c.tier == "negligible" and c.identical_rate == 1.0
    assert c.generation_delta_pct == 0.0 and c.benchmark_delta_points == 0.0
    rec_ = graded.recommendations[0]  # type: ignore[attr-defined]
    assert rec_.variant != "b" and "b" in rec_.reason


def test_the_report_shows_quality_per_task_group(graded: object) -> None:
    from analysis.render.html import study_html
    from analysis.render.study import study_markdown

    report = study_markdown(graded)  # type: ignore[arg-type]
    assert "## Quality against the baseline" in report
    assert "| b | classification | 4 | unacceptable | -25.0 |" in report
    assert "unacceptable (bench -25.0 pt, gen " in report  # the decision matrix says why
    page = study_html(graded)  # type: ignore[arg-type]
    assert "study-quality-chat" in page and "per task group" in page


def test_a_variant_that_mostly_failed_is_never_recommended(tmp_path: Path) -> None:
    """The reported case: the fastest variant's server was down for 90 % of its requests."""
    levels = {"a": [100.0, 101.0], "down": [10.0, 11.0]}
    for variant, reps in levels.items():
        for rep, level in enumerate(reps, start=1):
            folder = tmp_path / "cells" / f"{variant}--chat--r{rep}"
            folder.mkdir(parents=True)
            records = [
                rec(
                    i,
                    e2e=level,
                    ttft=level / 10,
                    output_tokens=30 if variant == "a" else 3000,
                    status="degraded" if variant == "down" and i % 10 else "ok",
                )
                for i in range(20)
            ]
            (folder / "records.jsonl").write_text("\n".join(r.model_dump_json() for r in records) + "\n")
            (folder / "summary.json").write_text(json.dumps(summarize(records).dump()))
            manifest = {"status": "completed", "scenario": {"name": "chat", "normalised": {}}, "backend": {}}
            (folder / "manifest.json").write_text(json.dumps(manifest))
    plan = Study.model_validate(
        {
            "name": "t",
            "baseline": "a",
            "scenarios": ["chat"],
            "repetitions": 2,
            "variants": {v: {"backend": "sim"} for v in levels},
        }
    )
    result = analyze_study(plan, tmp_path)
    decision = {d.variant: d for d in result.decision}
    assert decision["down"].success_rate == pytest.approx(0.10)
    assert decision["down"].output_tok_s and decision["down"].output_tok_s > (decision["a"].output_tok_s or 0)
    (rec_,) = result.recommendations
    assert rec_.variant == "a" and "left out for success rate: down (10 % < 95 %)" in rec_.reason
    strict = Study.model_validate({**plan.model_dump(), "min_success_rate": 1.0})
    assert analyze_study(strict, tmp_path).recommendations[0].variant == "a"
    lax = Study.model_validate({**plan.model_dump(), "min_success_rate": 0.05})
    assert analyze_study(lax, tmp_path).recommendations[0].variant == "down"
