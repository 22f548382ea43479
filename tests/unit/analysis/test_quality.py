"""Tiers, sample selection, scoring and drift on hand-made outputs."""

from __future__ import annotations

import pytest

from analysis.quality import Reference, Sample, drift, samples_of, score_samples, task_scores, tier_of
from tests.unit.analysis.test_summary import rec


@pytest.mark.parametrize(
    ("points", "percent", "tier"),
    [
        (None, None, "negligible"),
        (-3.0, None, "negligible"),
        (+12.0, +40.0, "negligible"),
        (-3.01, None, "acceptable"),
        (None, -8.0, "acceptable"),
        (None, -8.1, "concerning"),
        (-10.0, -2.0, "concerning"),
        (-1.0, -15.01, "unacceptable"),
        (-10.5, None, "unacceptable"),
    ],
)
def test_tier_is_the_worse_of_both_deltas(points: float | None, percent: float | None, tier: str) -> None:
    assert tier_of(points, percent) == tier


REFS = {
    "q1": Reference("qa", "The capital of Japan is Tokyo."),
    "q2": Reference("qa", "Mars is known as the Red Planet."),
    "m1": Reference("multiple_choice", "C"),
    "m2": Reference("multiple_choice", "B"),
    "free": Reference("creative", None),
}


def outputs(texts: dict[str, str], stage: str = "steady") -> list:
    return [
        rec(i, e2e=100.0, ttft=10.0, prompt_id=pid, output_text=t, stage=stage)
        for i, (pid, t) in enumerate(texts.items())
    ]


GOOD = {
    "q1": "The capital of Japan is Tokyo.",
    "q2": "Mars is called the Red Planet.",
    "m1": "C",
    "m2": "B) yes",
    "free": "a b c d a b c d",
}


def test_samples_of_keeps_ok_steady_outputs_with_text() -> None:
    records = [
        *outputs(GOOD),
        *outputs({"q1": "warm"}, stage="warmup"),
        rec(9, e2e=1.0, ttft=0.5, prompt_id="q1", output_text=None),
        rec(
            10, e2e=1.0, ttft=0.5, prompt_id="q1", output_text="x", status="degraded", reason="timeout_total"
        ),
        rec(11, e2e=1.0, ttft=0.5, prompt_id="unknown", output_text="free text"),
    ]
    samples = samples_of(records, REFS)
    assert [s.prompt_id for s in samples] == ["q1", "q2", "m1", "m2", "free", "unknown"]
    assert [s.task for s in samples] == ["qa", "qa", "multiple_choice", "multiple_choice", "open", "open"]


def test_score_samples_uses_each_tasks_scorers() -> None:
    steps: list[int] = []
    samples = score_samples(samples_of(outputs(GOOD), REFS), None, advance=steps.append)
    by_id = {s.prompt_id: s.scores for s in samples}
    assert set(by_id["q1"]) == {"rouge_l", "length_ratio"}  # SemScore skipped without a model
    assert by_id["q1"]["rouge_l"] == 1.0
    assert by_id["m2"] == {"mc_accuracy": 1.0, "exact_match": 0.0, "mc_readable": 1.0}
    assert by_id["free"] == {"repetition": pytest.approx(0.8)}
    assert sum(steps) == len(samples)
    table = {k: v.dump() for k, v in task_scores(samples, resamples=200, seed=1).items()}
    assert table["multiple_choice"]["scorers"]["mc_accuracy"]["estimate"] == 1.0
    assert table["qa"]["key_average"]["estimate"] == pytest.approx((1.0 + by_id["q2"]["rouge_l"]) / 2)


def _scored(texts: dict[str, str]) -> list[Sample]:
    return score_samples(samples_of(outputs(texts), REFS), None)


def test_identical_rerun_is_not_drift() -> None:
    d = drift(_scored(GOOD), _scored(GOOD), None, resamples=200, seed=1).dump()
    assert d["identical_rate"] == 1.0 and d["output_rouge_l"] == 1.0
    assert d["drifted"] is False and d["tier"] == "negligible"
    assert d["tasks"]["qa"]["generation_delta_pct"] == 0.0
    assert d["least_similar"] == []


def test_worse_answers_are_drift_with_the_right_tier() -> None:
    worse = {**GOOD, "q1": "Kyoto.", "m1": "A", "q2": "Mars is known as the Red Planet."}
    d = drift(_scored(GOOD), _scored(worse), None, resamples=200, seed=1).dump()
    mc = d["tasks"]["multiple_choice"]
    assert mc["benchmark_delta_points"] == pytest.approx(-50.0)  # one of two letters lost
    assert mc["tier"] == "unacceptable"
    qa = d["tasks"]["qa"]
    assert qa["generation_delta_pct"] is not None and qa["generation_delta_pct"] < -15
    assert d["tier"] == "unacceptable" and d["tier_level"] == 3
    assert d["drifted"] is True
    assert d["least_similar"][0]["prompt_id"] in {"q1", "m1"}
    assert d["tasks"]["open"]["tier"] is None  # no reference: output similarity only


def test_prompts_only_in_one_run_are_listed() -> None:
    d = drift(_scored(GOOD), _scored({"q1": GOOD["q1"], "new": "x"}), None, resamples=200, seed=1).dump()
    assert d["prompts_shared"] == 1
    assert d["only_in_baseline"] == ["free", "m1", "m2", "q2"]
    assert d["only_in_candidate"] == ["new"]


def test_kl_first_tokens_by_hand() -> None:
    import math

    from analysis.quality import kl_first_tokens

    p = [{"a": math.log(0.7), "b": math.log(0.2)}]
    q = [{"a": math.log(0.2), "b": math.log(0.7)}]
    assert kl_first_tokens(p, p) == 0.0
    # support {a, b, other}: P = (0.7, 0.2, 0.1), Q = (0.2, 0.7, 0.1) → 0.7 ln 3.5 + 0.2 ln(2/7)
    assert kl_first_tokens(p, q) == pytest.approx(0.7 * math.log(3.5) + 0.2 * math.log(0.2 / 0.7))
    # positions after the first differing greedy choice are not compared
    later = [{"z": math.log(0.9)}]
    assert kl_first_tokens(p + later, [*q, {"y": math.log(0.9)}]) == kl_first_tokens(p, q)
    # a token one side lacks gets an even share of that side's tail
    r = [{"a": math.log(0.7), "c": math.log(0.2)}]
    pp = [0.7, 0.2, 0.05, 0.05]  # a, b, c, other: P lacks c, its 0.1 tail split over c and other
    rr = [0.7, 0.05, 0.2, 0.05]
    assert kl_first_tokens(p, r) == pytest.approx(
        sum(x * math.log(x / y) for x, y in zip(pp, rr, strict=True))
    )
    assert kl_first_tokens([], q) is None


def test_drift_reports_kl_where_logprobs_were_kept() -> None:
    import math

    recs_b = outputs(GOOD)
    recs_c = outputs(GOOD)
    for r in recs_b:
        r.top_logprobs = [{"x": math.log(0.6), "y": math.log(0.3)}]
    for r in recs_c:
        r.top_logprobs = [{"x": math.log(0.5), "y": math.log(0.4)}]
    d = drift(
        score_samples(samples_of(recs_b, REFS), None),
        score_samples(samples_of(recs_c, REFS), None),
        None,
        resamples=200,
        seed=1,
    ).dump()
    expected = 0.6 * math.log(0.6 / 0.5) + 0.3 * math.log(0.3 / 0.4)
    assert d["kl_first_tokens"] == {
        "mean": pytest.approx(expected),
        "max": pytest.approx(expected),
        "prompts": 5,
    }
    assert drift(_scored(GOOD), _scored(GOOD), None, resamples=200, seed=1).kl_first_tokens is None
