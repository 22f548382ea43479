"""The manifest beside every run (method §2), as one typed object: what ran, where, and how it ended.

A run writes its manifest through ``ManifestFile``, which holds the ``Manifest`` and saves it whole
(atomically, secrets masked) each time a part of it is known: at the start, when the backend is up, as
each stage's window closes, and at the end. Readers (``summarize``, ``analyze``, a study's cells, the
report) load it with ``Manifest.read`` and ask it by attribute.

Sections a run fills in are typed here. Facts only an engine knows (a backend's versions, compile
evidence, a power source's own fields) are kept as that engine reported them, beside the named fields
every reader uses. A manifest written by a later version keeps sections this one does not name.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.core.files import write_atomic
from agent.core.redact import redact_obj
from agent.core.yamlfile import describe_error

__all__ = [
    "MANIFEST_SCHEMA_VERSION",
    "BackendFacts",
    "CacheResetEntry",
    "Clock",
    "Durability",
    "EnergyInfo",
    "Gpu",
    "Host",
    "Manifest",
    "ManifestFile",
    "PrefixCacheInfo",
    "RecordCounts",
    "ScenarioRef",
    "ScrapedEndpoint",
    "ServerMetricsInfo",
    "StageWindow",
    "Tool",
    "TraceInfo",
    "write_json_atomic",
]

MANIFEST_SCHEMA_VERSION = 1


class _Part(BaseModel):
    """A manifest section: named fields typed; dumped with only the fields that were given."""

    model_config = ConfigDict(extra="forbid")


class _Open(BaseModel):
    """A section an engine or power source fills with facts of its own beside the named ones."""

    model_config = ConfigDict(extra="allow")


class Tool(_Part):
    """The infermeter that ran, and the commit it ran from where it is a checkout."""

    name: str = "infermeter"
    version: str
    git_sha: str | None = None
    git_dirty: bool | None = None


class ScenarioRef(_Part):
    """One scenario of the run: its name, file, config hash and the fully resolved config."""

    name: str
    source: str | None = None
    sha256: str | None = None
    normalised: dict[str, object] = Field(default_factory=dict)


class Host(_Part):
    """The machine the client ran on."""

    hostname: str
    platform: str
    machine: str
    cpu_count: int | None = None
    python: str


class Gpu(_Part):
    """The GPUs NVML saw, or why it saw none."""

    available: bool
    reason: str | None = None
    devices: list[str] | None = None
    driver: str | None = None
    cuda: int | None = None


class BackendFacts(_Open):
    """What the backend said about itself once it was up (engine facts of its own kept beside these)."""

    backend: str | None = None
    model: str | None = None
    protocol: str | None = None
    base_url: str | None = None
    #: compile and warm-up evidence of a backend that compiles before the clock
    compile: dict[str, object] | None = None


class TraceInfo(_Part):
    """The trace a replay sent: its file, format, span and the speed it ran at."""

    path: str
    sha256: str
    format: str
    requests: int
    span_s: float
    speed: float
    prompt_lengths: str | None = None


class StageWindow(_Part):
    """When one stage ran, on the wall clock (the server's metrics and GPU energy are read over it)."""

    stage: str
    start_unix: float
    end_unix: float


class ScrapedEndpoint(_Open):
    """One server metrics endpoint a run scraped: its engine and how the scraping went."""

    url: str | None = None
    engine: str | None = None
    scrapes: int | None = None
    errors: int | None = None
    scrape_ms_p50: float | None = None


class ServerMetricsInfo(_Open):
    """The server's metrics the run scraped: the series file, each endpoint, each stage's window."""

    file: str | None = None
    interval_s: float | None = None
    rows: int | None = None
    cpu_ms: float | None = None
    endpoints: list[ScrapedEndpoint] = Field(default_factory=list)
    #: endpoints found but not scraped, and why
    not_scraped: list[str] | None = None
    windows: list[StageWindow] = Field(default_factory=list)


class CacheResetEntry(_Part):
    """One attempt to empty the server's prefix cache before a stage."""

    stage: str | None = None
    ok: bool = False
    how: str | None = None
    why: str | None = None
    ms: float | None = None


class PrefixCacheInfo(_Part):
    """Whether the server's prefix cache was emptied before each stage, and how each attempt went."""

    policy: str
    resets: list[CacheResetEntry] = Field(default_factory=list)


class EnergyInfo(_Open):
    """How energy was measured (or why not); the power source's own facts kept beside these."""

    status: str = "measured"
    source: str | None = None
    baseline: dict[str, object] | None = None
    poller: dict[str, object] | None = None
    samples_file: str | None = None


class RecordCounts(_Part):
    """Records written, by status; a failed write counts those it lost."""

    total: int
    ok: int | None = None
    degraded: int | None = None
    lost_in_failed_write: int | None = None


class Clock(_Part):
    """The run's clock origin: every record's offsets count from here."""

    origin_perf_counter_ns: int
    origin_unix_s: float


class Durability(_Part):
    """How far the records on disk fell behind the load at worst."""

    backlog_max_records: int
    write_delay_ms_max: float


class Manifest(BaseModel):
    """A run's ``manifest.json``; sections are None (and left out of the file) until they are known."""

    model_config = ConfigDict(extra="allow")

    schema_version: int = MANIFEST_SCHEMA_VERSION
    run_id: str | None = None
    status: str = "running"
    command: list[str] = Field(default_factory=list)
    tool: Tool | None = None
    scenario: ScenarioRef | None = None
    host: Host | None = None
    gpu: Gpu | None = None
    packages: dict[str, str | None] = Field(default_factory=dict)
    started_at: str | None = None
    ended_at: str | None = None
    error: str | None = None
    #: every scenario of a multi-tenant run (the first is ``scenario`` too)
    tenants: list[ScenarioRef] | None = None
    sweep: dict[str, object] | None = None
    trace: TraceInfo | None = None
    metrics_url: str | None = None
    backend: BackendFacts | None = None
    #: per scenario with a workload: how its prompts were made
    workload: dict[str, dict[str, object]] | None = None
    server_metrics: ServerMetricsInfo | None = None
    prefix_cache: PrefixCacheInfo | None = None
    energy: EnergyInfo | None = None
    records: RecordCounts | None = None
    degraded_by_reason: dict[str, int] | None = None
    clock: Clock | None = None
    durability: Durability | None = None
    chains: dict[str, int] | None = None
    not_sent_at_end: int | None = None
    #: ``run --workers N``: each worker process, its status and the records it wrote
    workers: list[dict[str, object]] | None = None
    #: ``run --ray ADDRESS``: the cluster the workers ran on (its address, Ray's version, nodes, CPUs)
    cluster: dict[str, object] | None = None

    @property
    def scenarios(self) -> list[ScenarioRef]:
        """Every scenario the run ran: the tenants of a multi-tenant run, else its one scenario."""
        if self.tenants:
            return list(self.tenants)
        return [self.scenario] if self.scenario is not None else []

    @property
    def completed(self) -> bool:
        """True once the run ended on its own terms (not failed, not interrupted)."""
        return self.status == "completed"

    def dump(self) -> dict[str, object]:
        """JSON-ready, with only the sections that were given."""
        return self.model_dump(mode="json", exclude_unset=True)

    @classmethod
    def read(cls, path: Path) -> Manifest | None:
        """The manifest at ``path``; None when there is none. Raises ``ValueError`` naming the file."""
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_bytes())
        except ValueError as e:  # not JSON, or not UTF-8
            raise ValueError(f"{path} is not valid JSON: {e}") from e
        if not isinstance(data, dict):
            raise ValueError(f"{path} is not a manifest (a JSON object)")
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise ValueError(f"{path}: {describe_error(e.errors()[0])}") from e


class ManifestFile:
    """A run's manifest and the file it lives in: change the manifest, then ``save()`` it whole."""

    def __init__(self, path: Path, manifest: Manifest) -> None:
        self.path = path
        self.manifest = manifest

    def save(self) -> None:
        """Write the manifest whole or not at all, secrets masked."""
        write_json_atomic(self.path, self.manifest.dump())


def write_json_atomic(path: Path, data: Mapping[str, object]) -> None:
    """Write JSON whole or not at all (``agent.core.files.write_atomic``), secrets masked on the way.

    A manifest records the command line and the backend's facts, which may carry an API key or a URL
    with a password (``agent.core.redact``).
    """
    write_atomic(path, json.dumps(redact_obj(data), indent=2, default=str) + "\n")
