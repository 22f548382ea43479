from __future__ import annotations

import random
import statistics

import pytest
from pydantic import ValidationError

from agent.backends.sim import SimArgs
from agent.sim.model import Dist, SimModel


def test_short_forms() -> None:
    assert Dist.model_validate(100) == Dist(mean=100)
    assert Dist.model_validate("12.5") == Dist(mean=12.5)
    assert Dist.model_validate("lognormal:100:20") == Dist(kind="lognormal", mean=100, sd=20)
    assert Dist.model_validate("exponential:5") == Dist(kind="exponential", mean=5)


@pytest.mark.parametrize("bad", ["fast", "gamma:1:2", "normal:x", "normal:1:2:3", True, -1])
def test_bad_forms_are_clear_errors(bad: object) -> None:
    with pytest.raises(ValidationError):
        Dist.model_validate(bad)


@pytest.mark.parametrize("spec", ["lognormal:100:20", "normal:100:20", "uniform:100:20", "exponential:100"])
def test_samples_have_the_declared_mean_and_are_never_negative(spec: str) -> None:
    d = Dist.model_validate(spec)
    rng = random.Random(1)
    xs = [d.sample(rng) for _ in range(20_000)]
    assert min(xs) >= 0
    assert statistics.fmean(xs) == pytest.approx(100, rel=0.03)
    if d.kind == "lognormal":
        assert statistics.stdev(xs) == pytest.approx(20, rel=0.1)


def test_same_seed_same_draws() -> None:
    d = Dist.model_validate("lognormal:10:3")
    assert [d.sample(random.Random(7)) for _ in range(3)] == [d.sample(random.Random(7)) for _ in range(3)]


def test_backend_args_take_model_fields_flat() -> None:
    args = SimArgs.model_validate({"ttft_ms": "normal:50:5", "itl_ms": 2, "protocol": "ollama"})
    assert args.sim.ttft_ms == Dist(kind="normal", mean=50, sd=5)
    assert args.sim.itl_ms == Dist(mean=2)
    assert args.protocol == "ollama"
    with pytest.raises(ValidationError):
        SimArgs.model_validate({"ttft": 5})


def test_rates_are_bounded() -> None:
    with pytest.raises(ValidationError):
        SimModel(error_rate=1.5)
