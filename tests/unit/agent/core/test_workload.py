"""Workload declarations: length distributions, seeded draws, ramps, and what the scenario accepts."""

from __future__ import annotations

import itertools
import random
import statistics

import numpy as np
import pytest
from pydantic import ValidationError

from agent.core.arrivals import ramp_rate, ramped, schedule
from agent.core.scenario import Scenario
from agent.core.workload import Lengths


@pytest.mark.parametrize(
    ("spec", "kind", "bounds"),
    [
        (512, "fixed", (512, 512)),
        ("512", "fixed", (512, 512)),
        ("512+-64", "normal", (320, 704)),
        ("512±64", "normal", (320, 704)),
        ("256-1024", "uniform", (256, 1024)),
        ("256..1024", "uniform", (256, 1024)),
        ({"mean": 512, "stddev": 64, "min": 384, "max": 640}, "normal", (384, 640)),
        ({"min": 10, "max": 20}, "uniform", (10, 20)),
        ({"values": [3, 9, 27]}, "empirical", (3, 27)),
    ],
)
def test_every_way_of_writing_a_length_reads_as_its_distribution(
    spec: object, kind: str, bounds: tuple
) -> None:
    lengths = Lengths.model_validate(spec)
    assert lengths.kind == kind and lengths.bounds() == bounds
    drawn = lengths.draw(random.Random(0), 2000)
    assert min(drawn) >= bounds[0] and max(drawn) <= bounds[1]
    if kind in ("uniform", "empirical"):
        assert min(drawn) == bounds[0] and max(drawn) == bounds[1]


@pytest.mark.parametrize(
    "spec",
    [
        True,
        "abc",
        "512+-",
        "-5",
        0,
        {"min": 9, "max": 3},
        {"mean": 5, "min": 9, "max": 20},
        {"value": 3, "mean": 4},
        {},
    ],
)
def test_a_length_that_makes_no_sense_is_refused(spec: object) -> None:
    with pytest.raises(ValidationError):
        Lengths.model_validate(spec)


def test_draws_are_seeded_and_a_normal_keeps_its_mean_and_spread() -> None:
    lengths = Lengths.model_validate("1024+-100")
    first = lengths.draw(random.Random(42), 5000)
    assert first == lengths.draw(random.Random(42), 5000)
    assert first != lengths.draw(random.Random(43), 5000)
    assert abs(statistics.fmean(first) - 1024) < 10 and abs(statistics.stdev(first) - 100) < 10


def test_a_ramp_rises_linearly_then_holds_the_rate() -> None:
    rate, ramp, start = 20.0, 5.0, 2.0
    assert ramp_rate(0, rate, ramp, start) == start and ramp_rate(2.5, rate, ramp, start) == 11.0
    assert ramp_rate(9, rate, ramp, start) == rate
    offsets = list(itertools.islice(ramped(schedule("constant", rate), rate, ramp, start), 400))
    assert offsets == sorted(offsets)
    during = sum(1 for t in offsets if t < ramp)
    expected = start * ramp + (rate - start) * ramp / 2  # the area under the ramp: 55 arrivals
    assert abs(during - expected) <= 1
    gaps_after = np.diff([t for t in offsets if t > ramp + 1])
    assert np.allclose(gaps_after, 1 / rate)
    early = np.diff(offsets[:5])
    assert all(g > 1 / rate for g in early)  # the rate starts low


BASE = {"name": "w", "requests": 4}


def test_a_scenario_takes_prompts_or_a_workload_never_both_nor_neither() -> None:
    synthetic = {"kind": "synthetic", "input_tokens": "100-200"}
    assert Scenario.model_validate({**BASE, "workload": synthetic}).prompts is None
    for data in ({**BASE}, {**BASE, "prompts": ["hi"], "workload": synthetic}):
        with pytest.raises(ValidationError, match="prompts or a workload"):
            Scenario.model_validate(data)


def test_a_conversation_workload_is_its_own_shape_in_closed_and_open_loops() -> None:
    talk = {"kind": "dataset", "path": "x.json", "turns": "all"}
    assert Scenario.model_validate({**BASE, "workload": talk}).shape == "conversation"
    sc = Scenario.model_validate({**BASE, "workload": talk, "load": {"arrival": "poisson", "rate": 2}})
    assert sc.shape == "conversation"
    with pytest.raises(ValidationError, match="own shape"):
        Scenario.model_validate({**BASE, "workload": talk, "agent": {"steps": 2}})


def test_requests_carry_models_by_weight_and_extras() -> None:
    sc = Scenario.model_validate(
        {
            **BASE,
            "prompts": ["hi"],
            "models": {"base": 3, "lora-a": 1},
            "stream": False,
            "request": {"body": {"min_tokens": 4}, "headers": {"X-Tenant": "blue"}},
        }
    )
    requests = list(itertools.islice(sc.requests_iter(), 4000))
    share = sum(r.model == "lora-a" for r in requests) / len(requests)
    assert 0.2 < share < 0.3
    assert [r.model for r in requests[:50]] == [r.model for r in itertools.islice(sc.requests_iter(), 50)]
    assert all(r.extra_body == {"min_tokens": 4} and r.headers == {"X-Tenant": "blue"} for r in requests[:5])
    assert not requests[0].stream


def test_the_hash_of_a_scenario_without_the_new_fields_is_unchanged() -> None:
    sc = Scenario.model_validate({**BASE, "prompts": ["hi"]})
    data = sc.normalised()
    assert not {"workload", "request", "models", "stream"} & set(data)
    assert not {"ramp", "ramp_from"} & set(data["load"])
    assert sc.derive(data, location="test").config_hash() == sc.config_hash()
