"""Workloads a scenario can draw its prompts from instead of a prompt list.

``synthetic``: prompts of drawn token lengths cut from real prose; ``shared_prefix``: groups of prompts
sharing a prefix, to measure prefix caching; ``dataset``: ShareGPT, JSONL, JSON, CSV, Parquet or a
Hugging Face dataset on disk, single turns or whole conversations. The models here are the declaration
(validated with the scenario, the hash covers them); the prompts themselves are made with the target
server's tokenizer once the backend is up (``agent.run.prompts``).
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from agent.core.datasets import Columns, DatasetFormat, LoadedDataset, read_dataset
from agent.core.durations import Duration
from agent.core.record import Turn

__all__ = [
    "MAX_PROMPT_TOKENS",
    "MAX_WORKLOAD_PROMPTS",
    "DatasetWorkload",
    "Lengths",
    "SharedPrefixWorkload",
    "SyntheticWorkload",
    "WorkPrompt",
    "Workload",
]

#: Longest prompt a workload draws (a million tokens: past every context window a server has today).
MAX_PROMPT_TOKENS = 1_000_000
#: Most distinct prompts a workload makes before the clock starts; a longer run cycles through them.
MAX_WORKLOAD_PROMPTS = 1_000_000

_SPEC = re.compile(
    r"^\s*(?P<a>\d+)\s*(?:(?P<pm>\+-|±|\+/-)\s*(?P<sd>\d+(?:\.\d+)?)|(?P<to>-|\.\.)\s*(?P<b>\d+))?\s*$"
)


@dataclass(frozen=True, slots=True)
class WorkPrompt:
    """One prompt a workload made: its text, lengths and labels, and a conversation's later turns."""

    id: str
    text: str
    system: str | None = None
    #: output tokens to ask for (None: the scenario's output_tokens)
    max_tokens: int | None = None
    #: the prompt length drawn (content or whole prompt, as the workload's ``length_of`` says)
    prompt_tokens: int | None = None
    #: tokens the chat template and system prompt add at the server, measured (None: not measured)
    template_tokens: int | None = None
    group: str | None = None
    turns: tuple[Turn, ...] = ()
    answer: str | None = None


class Lengths(BaseModel):
    """A token-length distribution: fixed, uniform over [min, max], normal clipped to [min, max], empirical.

    Written as a number (``512``), a string (``"512+-64"`` or ``"512±64"`` for normal, ``"256-1024"`` for
    uniform), or a mapping (``{mean: 512, stddev: 64, min: 384, max: 640}``, ``{min: 256, max: 1024}``,
    ``{values: [...]}`` to draw from with replacement). A normal without bounds is clipped to mean ± 3 sd.
    """

    model_config = ConfigDict(extra="forbid")

    value: int | None = Field(None, ge=1, le=MAX_PROMPT_TOKENS)
    mean: float | None = Field(None, ge=1, le=MAX_PROMPT_TOKENS)
    stddev: float | None = Field(None, ge=0, le=MAX_PROMPT_TOKENS)
    min: int | None = Field(None, ge=1, le=MAX_PROMPT_TOKENS)
    max: int | None = Field(None, ge=1, le=MAX_PROMPT_TOKENS)
    values: list[Annotated[int, Field(ge=1, le=MAX_PROMPT_TOKENS)]] | None = Field(None, min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _spec(cls, data: Any) -> Any:
        if isinstance(data, bool):
            raise ValueError("a length is a number of tokens, a string such as '512+-64', or a mapping")
        if isinstance(data, int):
            return {"value": data}
        if isinstance(data, str):
            m = _SPEC.match(data)
            if not m:
                raise ValueError(
                    f"not a length: {data!r} (use 512, '512+-64' for normal, '256-1024' for uniform)"
                )
            a = int(m["a"])
            if m["pm"]:
                return {"mean": a, "stddev": float(m["sd"])}
            if m["to"]:
                return {"min": a, "max": int(m["b"])}
            return {"value": a}
        return data

    @model_validator(mode="after")
    def _one_kind(self) -> Lengths:
        kinds = [self.value is not None, self.mean is not None, self.values is not None]
        if sum(kinds) > 1:
            raise ValueError("give one of value, mean (with stddev) or values")
        if not any(kinds) and (self.min is None or self.max is None):
            raise ValueError("a uniform length needs min and max")
        if self.mean is not None and self.stddev is None:
            self.stddev = 0.0
        if self.min is not None and self.max is not None and self.max < self.min:
            raise ValueError(f"max ({self.max}) is below min ({self.min})")
        if (self.mean is not None and (self.min or 1) > self.mean) or (
            self.max is not None and self.mean is not None and self.max < self.mean
        ):
            raise ValueError("the mean must lie between min and max")
        return self

    @property
    def kind(self) -> Literal["fixed", "uniform", "normal", "empirical"]:
        """Which distribution this is."""
        if self.value is not None:
            return "fixed"
        if self.mean is not None:
            return "normal"
        if self.values is not None:
            return "empirical"
        return "uniform"

    def bounds(self) -> tuple[int, int]:
        """The smallest and largest length this can draw."""
        if self.value is not None:
            return self.value, self.value
        if self.values is not None:
            return min(self.values), max(self.values)
        if self.mean is not None:
            sd = self.stddev or 0.0
            lo = self.min if self.min is not None else max(1, math.floor(self.mean - 3 * sd))
            hi = self.max if self.max is not None else math.ceil(self.mean + 3 * sd)
            return lo, hi
        assert self.min is not None and self.max is not None  # the validator requires them
        return self.min, self.max

    def draw(self, rng: random.Random, n: int) -> list[int]:
        """``n`` lengths; the same generator state always gives the same lengths, on every machine."""
        lo, hi = self.bounds()
        if self.value is not None:
            return [self.value] * n
        if self.values is not None:
            return rng.choices(self.values, k=n)
        if self.mean is not None:
            sd = self.stddev or 0.0
            return [min(hi, max(lo, round(rng.gauss(self.mean, sd)))) for _ in range(n)]
        return [rng.randint(lo, hi) for _ in range(n)]

    def label(self) -> str:
        """A short description, e.g. ``512±64 [384, 640]``."""
        lo, hi = self.bounds()
        if self.kind == "fixed":
            return str(self.value)
        if self.kind == "normal":
            return f"{self.mean:g}±{self.stddev:g} [{lo}, {hi}]"
        if self.kind == "empirical":
            return f"empirical over {len(self.values or [])} values [{lo}, {hi}]"
        return f"uniform [{lo}, {hi}]"


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int = Field(0, description="the same seed gives the same prompts and lengths on every machine")
    corpus: str | None = Field(
        None, description="a UTF-8 text file of prose to cut prompts from; None: the built-in prose"
    )
    tokenizer: str | None = Field(
        None,
        description="a local tokenizer (tokenizer.json or a folder with one) for servers without /tokenize",
    )


class SyntheticWorkload(_Base):
    """Prompts of drawn token lengths cut from prose with the server's tokenizer; drawn output lengths."""

    kind: Literal["synthetic"]
    input_tokens: Lengths
    output_tokens: Lengths | None = Field(None, description="None: the scenario's output_tokens")
    length_of: Literal["prompt", "content"] = Field(
        "prompt",
        description="chat: whether the drawn length is the whole prompt at the server (template and system "
        "prompt included) or the user's content only",
    )
    prompts: int | None = Field(
        None, ge=1, le=MAX_WORKLOAD_PROMPTS, description="distinct prompts (default: one per request)"
    )


class SharedPrefixWorkload(_Base):
    """G groups of prompts; each group shares a prefix of P tokens, each prompt has its own suffix."""

    kind: Literal["shared_prefix"]
    groups: int = Field(ge=1, le=100_000)
    prefix_tokens: int = Field(ge=1, le=MAX_PROMPT_TOKENS)
    suffix_tokens: Lengths
    prompts_per_group: int = Field(8, ge=1, le=100_000)
    order: Literal["interleaved", "runs"] = Field(
        "interleaved", description="interleaved: group 0, 1, … 0, 1, …; runs: all of group 0, then group 1 …"
    )
    system_tokens: int = Field(0, ge=0, le=MAX_PROMPT_TOKENS, description="one system prompt shared by all")
    output_tokens: Lengths | None = Field(None, description="None: the scenario's output_tokens")

    @model_validator(mode="after")
    def _size(self) -> SharedPrefixWorkload:
        if self.groups * self.prompts_per_group > MAX_WORKLOAD_PROMPTS:
            raise ValueError(f"groups × prompts_per_group is over {MAX_WORKLOAD_PROMPTS:,} prompts")
        return self


class DatasetWorkload(_Base):
    """Prompts (or whole conversations) from a dataset file or a Hugging Face dataset saved on disk."""

    kind: Literal["dataset"]
    path: str = Field(min_length=1)
    format: DatasetFormat = "auto"
    columns: Columns = Columns()
    split: str | None = Field(None, description="Hugging Face datasets: the split (default train)")
    turns: Literal["first", "all"] = Field(
        "first", description="first: each conversation's first turn as a prompt; all: whole conversations"
    )
    answers: Literal["server", "dataset"] = Field(
        "server", description="conversations: each later turn sees the server's answer, or the dataset's"
    )
    output_tokens: Literal["dataset", "scenario"] | Lengths = Field(
        "dataset",
        description="dataset: the answer's length (or the output column); scenario: its output_tokens; or a "
        "distribution",
    )
    think_time: Duration = Field(
        0.0, description="conversations: pause between turns the data gives none for"
    )
    sample: int | None = Field(
        None, ge=1, le=MAX_WORKLOAD_PROMPTS, description="this many, drawn with the seed"
    )
    min_prompt_tokens: int | None = Field(None, ge=1)
    max_prompt_tokens: int | None = Field(None, ge=1)
    min_output_tokens: int | None = Field(None, ge=1)
    max_output_tokens: int | None = Field(None, ge=1)
    _data: LoadedDataset | None = PrivateAttr(None)

    def load(self, base: Path) -> LoadedDataset:
        """Read the dataset (a relative path from ``base``) once; the same object after."""
        if self._data is None:
            path = Path(self.path).expanduser()
            if not path.is_absolute():
                path = base / path
            self._data = read_dataset(path, self.format, self.columns, self.split)
        return self._data

    @property
    def data(self) -> LoadedDataset:
        """The dataset, once loaded."""
        if self._data is None:
            raise RuntimeError("dataset not loaded; load scenarios with load_scenario()")
        return self._data


#: Every workload kind, told apart by ``kind``.
Workload = Annotated[SyntheticWorkload | SharedPrefixWorkload | DatasetWorkload, Field(discriminator="kind")]
