"""The daemon's configuration file: targets to probe, how often, where metrics and samples go.

```yaml
metrics: {host: 127.0.0.1, port: 9464}
probe: {interval: 10s, jitter: 0.2, max_concurrency: 2, timeout: 60s}
backoff: {initial: 5s, max: 5m, factor: 2}
sampling: {every: 10, dir: /var/lib/infermeter/samples, max_bytes: 10000000, keep: 5}
targets:
  - name: llama-local
    backend: openai
    args: {base_url: "http://127.0.0.1:8080"}
    scenario: micro
```
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.core.durations import Duration, PositiveDuration
from agent.core.errors import ConfigError

__all__ = ["DaemonConfig", "ServerMetricsConfig", "TargetConfig", "load_daemon_config"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MetricsConfig(_Strict):
    """Where ``/metrics``, ``/healthz``, ``/readyz`` and ``/status`` listen (changes need a restart)."""

    host: str = "127.0.0.1"
    port: int = Field(9464, ge=0, le=65535)


class ProbeConfig(_Strict):
    """How hard the daemon leans on production: one request per interval per target, jittered."""

    interval: PositiveDuration = Field(10.0, description="seconds between probes of one target")
    jitter: float = Field(0.2, ge=0, lt=1, description="each interval is scaled by 1 ± jitter at random")
    max_concurrency: int = Field(2, ge=1, description="probes in flight across all targets")
    timeout: PositiveDuration = Field(60.0, description="a probe's whole-request timeout")
    max_tokens: int = Field(32, ge=1, description="output tokens per probe (a target may override)")
    grace: Duration = Field(10.0, description="on SIGTERM, how long in-flight probes may finish")

    @model_validator(mode="after")
    def _positive(self) -> ProbeConfig:
        for name in ("interval", "timeout"):
            if not getattr(self, name):
                raise ValueError(f"{name} must be a positive duration")
        return self


class BackoffConfig(_Strict):
    """After a failed probe: wait initial × factor^(failures − 1), capped, until the target answers."""

    initial: PositiveDuration = 5.0
    max: PositiveDuration = 300.0
    factor: float = Field(2.0, ge=1)


class SamplingConfig(_Strict):
    """Every Nth ok response (with its prompt id) to rotating JSONL files for the offline analyzer."""

    every: int = Field(10, ge=0, description="0 turns sampling off")
    dir: Path = Path("samples")
    max_bytes: int = Field(10_000_000, ge=1024, description="rotate a file at this size")
    keep: int = Field(5, ge=1, description="rotated files kept beside the live one")


class ServerMetricsConfig(_Strict):
    """The targets' own Prometheus endpoints, scraped beside the probes into the sampling directory."""

    interval: PositiveDuration = Field(15.0, description="how often each target's server is scraped")
    max_bytes: int = Field(20_000_000, ge=4096, description="rotate a target's series file at this size")


class TargetConfig(_Strict):
    """One thing to probe: a backend (any registered one, with its Args) and a scenario's prompts."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    backend: str
    args: dict[str, object] = Field(default_factory=dict)
    server_metrics: list[str] = Field(
        default_factory=lambda: ["auto"],
        description="endpoints of the target's own metrics: auto (the backend's /metrics when it serves "
        "one), URLs, or [] for none",
    )

    @field_validator("server_metrics")
    @classmethod
    def _endpoints(cls, value: list[str]) -> list[str]:
        """``auto`` or http(s) URLs."""
        for v in value:
            if v != "auto" and not v.startswith(("http://", "https://")):
                raise ValueError(f"{v!r} is neither auto nor an http(s) URL of a metrics endpoint")
        return value

    scenario: str = "micro"
    interval: PositiveDuration = None
    max_tokens: int | None = Field(None, ge=1)


class DaemonConfig(_Strict):
    """The whole file."""

    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    probe: ProbeConfig = Field(default_factory=ProbeConfig)
    backoff: BackoffConfig = Field(default_factory=BackoffConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    server_metrics: ServerMetricsConfig = Field(default_factory=ServerMetricsConfig)
    targets: list[TargetConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> DaemonConfig:
        names = [t.name for t in self.targets]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"target names must be unique; repeated: {', '.join(dupes)}")
        return self


def load_daemon_config(path: Path) -> DaemonConfig:
    """Read and validate ``path``; one ConfigError naming the file and every bad field."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot read daemon config {path}: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"daemon config {path} is not UTF-8 text (byte {e.start})") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"daemon config {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"daemon config {path} must be a YAML mapping")
    try:
        return DaemonConfig.model_validate(data)
    except ValidationError as e:
        lines = [f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}" for err in e.errors()]
        raise ConfigError(f"daemon config {path}: " + "; ".join(lines)) from e
