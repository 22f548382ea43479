"""A study file: named variants × scenarios × repetitions, a baseline, an order, and what to decide.

A study is the research workflow in one file: which backend, which quantisation, which model size is
good enough and cheapest for a workload. Every cell (variant × scenario × repetition) is an ordinary run;
the order of the cells is seeded and interleaved by default, so drift over time is spread over every
variant instead of passing for a difference between them.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent.core.errors import ConfigError
from agent.core.manifest import Manifest
from agent.core.rundir import RunDir
from agent.core.yamlfile import read_yaml, validate

__all__ = ["Cell", "Serve", "Study", "Variant", "cell_status", "load_study"]

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


class Serve(BaseModel):
    """A server the study starts for a variant (``infermeter serve``) and stops when the study ends.

    The API follows the variant's backend: ``openai`` gets llama.cpp's own server, ``ollama`` the
    Ollama-protocol emulation over the same engine. The variant's ``model_path`` is the file it serves.
    """

    model_config = ConfigDict(extra="forbid")

    slots: int = Field(4, ge=1, le=64, description="requests the engine serves at once")
    threads: int | None = Field(None, ge=1, description="CPU threads of the engine")
    requantize: Literal["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"] | None = Field(
        None, description="serve the model re-quantised to this type"
    )
    startup_timeout_s: float = Field(300.0, gt=0, description="how long the server may take to listen")


class Variant(BaseModel):
    """One way of serving the model: a backend, its arguments, and what the variant is."""

    model_config = ConfigDict(extra="forbid")

    backend: str
    description: str = Field("", description="what the variant is and how it was made, for the report")
    model: str | None = Field(None, description="--model: the model id (HTTP backends) or path / HF id")
    model_path: Path | None = Field(None, description="--model-path: a GGUF file (relative to the study)")
    base_url: str | None = Field(None, description="--base-url of a running server")
    compile: Literal["prefill", "all"] | None = None
    args: dict[str, object] = Field(default_factory=dict, description="backend arguments (--backend-arg)")
    labels: dict[str, str] = Field(default_factory=dict, description="e.g. quant: Q4_K_M")
    axis: dict[str, float] = Field(default_factory=dict, description="numeric axes, e.g. params_m: 270")
    usd_per_hour: float | None = Field(
        None, gt=0, description="this variant's worker price (else the study's)"
    )
    serve: Serve | None = Field(None, description="a server the study starts for this variant")

    @model_validator(mode="after")
    def _serve_fits(self) -> Variant:
        if self.serve is None:
            return self
        if self.backend not in ("openai", "ollama"):
            raise ValueError("serve starts an openai or ollama server; use backend: openai or ollama")
        if self.base_url is not None:
            raise ValueError("serve starts its own server; drop base_url")
        return self


class Equivalence(BaseModel):
    """When two variants count as the same: within ``margin_pct`` of the baseline's mean (TOST)."""

    model_config = ConfigDict(extra="forbid")

    margin_pct: float = Field(10.0, gt=0, le=100)
    metrics: list[str] = Field(default_factory=lambda: ["ttft_ms", "tpot_ms", "e2e_ms", "wall_tok_s"])


class Slo(BaseModel):
    """Objectives every cell's goodput is measured against."""

    model_config = ConfigDict(extra="forbid")

    ttft_ms: float | None = Field(None, gt=0)
    tpot_ms: float | None = Field(None, gt=0)
    e2e_ms: float | None = Field(None, gt=0)


class Study(BaseModel):
    """A whole study file."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    variants: dict[str, Variant] = Field(min_length=2)
    baseline: str
    scenarios: list[str] = Field(min_length=1, description="built-in names or paths (relative to the study)")
    repetitions: int = Field(3, ge=1, le=100)
    order: Literal["interleaved", "blocked"] = "interleaved"
    seed: int = 0
    #: overrides of every scenario, as the command-line flags of the same names
    requests: int | None = Field(None, ge=1)
    duration: str | None = None
    concurrency: int | None = Field(None, ge=1)
    warmup: int | None = Field(None, ge=0)
    max_tokens: int | None = Field(None, ge=1)
    slo: Slo = Field(default_factory=Slo)
    alpha: float = Field(0.05, gt=0, lt=0.5)
    equivalence: Equivalence = Field(default_factory=Equivalence)
    usd_per_hour: float | None = Field(None, gt=0, description="price of one serving worker")
    energy: str = Field("off", description="--energy for every cell: off, auto, nvml, replay:TRACE.csv")
    min_success_rate: float = Field(
        0.95, ge=0, le=1, description="a variant whose cells succeed less often is never recommended"
    )
    #: where the study file is (relative paths resolve from there); set by ``load_study``
    source: str | None = Field(None, exclude=True)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("use lower-case letters, digits, '_', '.', '-'")
        return value

    @field_validator("variants")
    @classmethod
    def _variant_names(cls, value: dict[str, Variant]) -> dict[str, Variant]:
        bad = [name for name in value if not _NAME.match(name)]
        if bad:
            raise ValueError(f"variant names use lower-case letters, digits, '_', '.', '-': {', '.join(bad)}")
        return value

    @field_validator("energy", mode="before")
    @classmethod
    def _energy_words(cls, value: object) -> object:
        """YAML reads a bare ``off`` (and ``on``) as a boolean: take it as the word that was written."""
        if isinstance(value, bool):
            return "auto" if value else "off"
        return value

    @model_validator(mode="after")
    def _baseline_known(self) -> Study:
        if self.baseline not in self.variants:
            raise ValueError(f"baseline '{self.baseline}' is not a variant ({', '.join(self.variants)})")
        if len(set(self.scenarios)) != len(self.scenarios):
            raise ValueError("a scenario is listed twice")
        return self

    def config_hash(self) -> str:
        """sha256 of the normalised study: a changed file is told apart from a resumed one."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def resolve(self, value: str | Path) -> Path | str:
        """A scenario or model path relative to the study file; a built-in name stays a name."""
        path = Path(value)
        if self.source is None or path.is_absolute():
            return value
        if isinstance(value, Path) or str(value).endswith((".yaml", ".yml")) or "/" in str(value):
            return (Path(self.source).parent / path).resolve()
        return value

    def cells(self) -> list[Cell]:
        """Every cell, in the order they run: seeded shuffle (interleaved) or variant by variant (blocked)."""
        cells = [
            Cell(variant, scenario, rep)
            for variant in self.variants
            for scenario in self.scenarios
            for rep in range(1, self.repetitions + 1)
        ]
        if self.order == "interleaved":
            random.Random(self.seed).shuffle(cells)
        return cells


@dataclass(frozen=True, slots=True)
class Cell:
    """One run of the study: a variant on a scenario, the n-th time."""

    variant: str
    scenario: str
    repetition: int

    @property
    def name(self) -> str:
        """The cell's folder name under ``DIR/cells/``."""
        return f"{self.variant}--{Path(self.scenario).stem}--r{self.repetition}"


def load_study(path: Path) -> Study:
    """Parse and validate a study file; one ConfigError naming file, line and field."""
    data, node = read_yaml(path)
    study = validate(Study, data, node, path, "study")
    study.source = str(path)
    if len({Path(s).stem for s in study.scenarios}) != len(study.scenarios):
        raise ConfigError("two scenarios share a file name; give them different names", location=str(path))
    return study


def cell_status(folder: Path) -> str:
    """``completed``, ``interrupted``, ``failed`` or ``missing``, from the cell's manifest."""
    try:
        manifest = Manifest.read(RunDir(folder).manifest)
    except (OSError, ValueError):
        return "missing"
    if manifest is None:
        return "missing"
    return manifest.status if manifest.status in ("completed", "interrupted", "failed") else "failed"
