"""The simulator's timing model: what the simulated server does with each request, in milliseconds."""

from __future__ import annotations

import math
import random
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.core.errors import ConfigError

__all__ = ["Dist", "SimModel", "parse_model"]

DistKind = Literal["fixed", "uniform", "normal", "lognormal", "exponential"]


class Dist(BaseModel):
    """A non-negative duration or count distribution, in the unit of the field that holds it.

    Written as a number (fixed), ``"kind:mean"`` or ``"kind:mean:sd"``: ``lognormal:100:20`` has mean 100
    and standard deviation 20; ``uniform:100:20`` spans 80–120; ``exponential:100`` has mean 100.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: DistKind = "fixed"
    mean: float = Field(ge=0)
    sd: float = Field(0.0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _from_short(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("expected a number or 'kind:mean[:sd]'")
        if isinstance(value, int | float):
            return {"kind": "fixed", "mean": value}
        if isinstance(value, str):
            parts = value.split(":")
            try:
                if len(parts) == 1:
                    return {"kind": "fixed", "mean": float(parts[0])}
                if len(parts) in (2, 3):
                    return {
                        "kind": parts[0],
                        "mean": float(parts[1]),
                        "sd": float(parts[2]) if parts[2:] else 0,
                    }
            except ValueError:
                pass
            raise ValueError(f"{value!r} is not a number or 'kind:mean[:sd]' (e.g. lognormal:100:20)")
        return value

    def sample(self, rng: random.Random) -> float:
        """One draw, never negative."""
        if self.kind == "fixed" or (self.sd == 0 and self.kind != "exponential"):
            return self.mean
        if self.kind == "uniform":
            return max(0.0, rng.uniform(self.mean - self.sd, self.mean + self.sd))
        if self.kind == "normal":
            return max(0.0, rng.gauss(self.mean, self.sd))
        if self.kind == "exponential":
            return rng.expovariate(1.0 / self.mean) if self.mean > 0 else 0.0
        # lognormal with the given mean and sd of the variable itself
        if self.mean <= 0:
            return 0.0
        sigma2 = math.log(1.0 + (self.sd / self.mean) ** 2)
        return rng.lognormvariate(math.log(self.mean) - sigma2 / 2, math.sqrt(sigma2))


class SimModel(BaseModel):
    """What the simulated server does with each request; every time is in milliseconds."""

    model_config = ConfigDict(extra="forbid")

    model_name: str = "sim"
    ttft_ms: Dist = Field(Dist(mean=100.0), description="arrival → first token, before prompt-length cost")
    prefill_ms_per_token: float = Field(0.0, ge=0, description="added to TTFT per prompt token")
    itl_ms: Dist = Field(Dist(mean=10.0), description="gap between tokens")
    output_tokens: Dist | None = Field(None, description="tokens to emit; None honours max_tokens exactly")
    tokens_per_chunk: int = Field(1, ge=1, le=64, description="tokens carried by one streamed chunk")
    reasoning_tokens: int = Field(0, ge=0, description="the first N tokens are reasoning / thinking")
    chars_per_token: float = Field(4.0, gt=0, description="how prompt text is counted as tokens")
    load_ms: float = Field(0.0, ge=0, description="a cold start: delay + load_duration on the first request")
    error_rate: float = Field(0.0, ge=0, le=1, description="share of requests answered HTTP 500")
    drop_rate: float = Field(0.0, ge=0, le=1, description="share of streams cut halfway, connection dropped")
    stall_rate: float = Field(0.0, ge=0, le=1, description="share of streams that stall halfway")
    stall_ms: float = Field(5000.0, ge=0)
    precise: bool = Field(
        False,
        description="spin the last 1.5 ms before each chunk so it leaves within microseconds of its schedule "
        "(costs server CPU: give the simulator its own core)",
    )
    seed: int = 0


def parse_model(values: dict[str, object]) -> SimModel:
    """A SimModel from CLI-style values, with one clear error on bad input."""
    try:
        return SimModel.model_validate(values)
    except ValueError as e:
        raise ConfigError(f"invalid simulator model: {e}") from e
