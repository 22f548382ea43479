"""Each load shape answers the questions a run asks before its load: unit, records, in-flight bound."""

from __future__ import annotations

from typing import Any

from agent.core.scenario import MAX_IN_FLIGHT, Scenario
from agent.run.runner import expected_records, in_flight, request_shapes
from agent.run.shapes import SHAPES, shape, shape_name


def scenario(**kw: Any) -> Scenario:
    base: dict[str, Any] = {"name": "t", "prompts": ["a", "b", "c"], "requests": 7, "concurrency": 3}
    base.update(kw)
    return Scenario.model_validate(base)


def test_every_shape_names_its_unit_of_work() -> None:
    units = {name: s.unit for name, s in SHAPES.items()}
    assert units == {
        "closed": "request",
        "open": "request",
        "trace": "request",
        "chain": "chain",
        "batch": "batch",
        "conversation": "conversation",
    }


def test_records_follow_the_unit_warmup_and_cooldown() -> None:
    assert expected_records(scenario(warmup=2, cooldown=1)) == 2 + 7 + 1
    chains = scenario(agent={"steps": 3, "tool_results": ["ok"]}, warmup=0)
    assert shape(shape_name(chains)).units(chains, 7) == 3 and expected_records(chains) == 9
    concurrent = scenario(batch={"size": 4, "mode": "concurrent"}, warmup=0)
    batched = scenario(batch={"size": 4, "mode": "batched"}, warmup=0)
    assert expected_records(concurrent) == 8 and expected_records(batched) == 2
    assert expected_records(scenario(requests=None, duration="5s")) is None


def test_the_in_flight_bound_is_the_shapes_own() -> None:
    assert in_flight(scenario()) == 3
    assert in_flight(scenario(batch={"size": 4, "mode": "concurrent"})) == 12
    assert in_flight(scenario(batch={"size": 4, "mode": "batched"})) == 3
    assert in_flight(scenario(load={"arrival": "poisson", "rate": 5.0})) == MAX_IN_FLIGHT
    assert in_flight(scenario(load={"arrival": "poisson", "rate": 5.0, "max_concurrency": 9})) == 9


def test_request_shapes_are_singles_or_the_batches_a_batched_scenario_sends() -> None:
    singles, batches = request_shapes(scenario())
    assert [r.prompt or r.messages for r in singles] and batches == [] and len(singles) == 3
    singles, batches = request_shapes(scenario(batch={"size": 2, "mode": "batched"}))
    assert singles == [] and [len(b) for b in batches] == [2, 2, 2]
