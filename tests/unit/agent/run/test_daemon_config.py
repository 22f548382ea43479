"""The daemon's config file: defaults, durations, and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.core.errors import ConfigError
from agent.run.daemon_config import load_daemon_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "daemon.yaml"
    path.write_text(text)
    return path


def test_a_minimal_config_gets_gentle_defaults(tmp_path: Path) -> None:
    cfg = load_daemon_config(write(tmp_path, "targets: [{name: a, backend: sim}]\n"))
    assert cfg.probe.interval == 10.0 and cfg.probe.max_concurrency == 2 and cfg.metrics.host == "127.0.0.1"
    assert cfg.backoff.max == 300.0 and cfg.sampling.every == 10 and cfg.targets[0].scenario == "micro"


def test_durations_read_like_the_scenarios(tmp_path: Path) -> None:
    cfg = load_daemon_config(
        write(tmp_path, "probe: {interval: 500ms, timeout: 2m}\ntargets: [{name: a, backend: sim}]\n")
    )
    assert cfg.probe.interval == 0.5 and cfg.probe.timeout == 120.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("targets: []\n", "targets"),
        ("targets: [{name: a, backend: sim}, {name: a, backend: sim}]\n", "repeated: a"),
        ("probe: {interval: soon}\ntargets: [{name: a, backend: sim}]\n", "probe.interval"),
        ("probe: {jitter: 1.5}\ntargets: [{name: a, backend: sim}]\n", "probe.jitter"),
        ("targets: [{name: 'a b', backend: sim}]\n", "targets.0.name"),
        ("targets: [{name: a, backend: sim, colour: red}]\n", "targets.0.colour"),
        ("- just\n- a list\n", "must be a YAML mapping"),
        ("targets: [\n", "not valid YAML"),
        ("probe: {interval: -1}\ntargets: [{name: a, backend: sim}]\n", "probe.interval"),
        ("probe: {interval: 0}\ntargets: [{name: a, backend: sim}]\n", "probe.interval"),
        ("probe: {timeout: .nan}\ntargets: [{name: a, backend: sim}]\n", "probe.timeout"),
        ("backoff: {initial: -1}\ntargets: [{name: a, backend: sim}]\n", "backoff.initial"),
        ("backoff: {max: .inf}\ntargets: [{name: a, backend: sim}]\n", "backoff.max"),
        ("targets: [{name: a, backend: sim, interval: -2s}]\n", "targets.0.interval"),
    ],
)
def test_bad_configs_name_the_file_and_the_field(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_daemon_config(path)
    assert str(path) in str(e.value) and expected in str(e.value)


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read daemon config"):
        load_daemon_config(tmp_path / "nope.yaml")


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "daemon.yaml"
    path.write_bytes(b"targets: [{name: \xff, backend: sim}]\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_daemon_config(path)
