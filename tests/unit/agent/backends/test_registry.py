"""Backends come only from the registry, and each reads the common command-line flags itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from agent.backends import available, create
from agent.backends.base import CliContext, args_type


def ctx(tmp_path: Path, **over: Any) -> CliContext:
    base: dict[str, Any] = {
        "base_url": None,
        "model": None,
        "model_path": None,
        "compile": None,
        "openai_base_url": None,
        "openai_model": None,
        "openai_api_key": None,
        "cache_dir": tmp_path / "cache",
        "out": tmp_path,
        "in_flight": 4,
        "uncapped": False,
    }
    return CliContext(**{**base, **over})


@pytest.mark.parametrize("name", available())
def test_every_registered_backend_builds_from_the_common_flags(name: str, tmp_path: Path) -> None:
    backend = create(name, args_type(name).from_cli(ctx(tmp_path, base_url="http://127.0.0.1:9")))
    assert backend.name in (name, "openai", "ollama")  # a label may be set; nothing is started here


def test_each_backend_reads_what_applies_to_it(tmp_path: Path) -> None:
    given = ctx(
        tmp_path,
        model="m",
        model_path=tmp_path / "x.gguf",
        compile="all",
        in_flight=100,
        openai_base_url="http://127.0.0.1:8000",
        openai_api_key=SecretStr("k"),
    )
    openai = args_type("openai").from_cli(given)
    assert openai["base_url"] == "http://127.0.0.1:8000" and openai["model"] == "m"
    assert openai["max_connections"] == 100 and openai["api_key"].get_secret_value() == "k"
    embedded = args_type("embedded").from_cli(given)
    assert embedded["n_parallel"] == 32 and embedded["model_path"] == tmp_path / "x.gguf"
    assert embedded["log_path"] == tmp_path / "engine.log"
    assert args_type("embedded").from_cli(ctx(tmp_path, uncapped=True, in_flight=10**6))["n_parallel"] == 8
    assert args_type("transformers").from_cli(given) == {"model": "m", "compile": "all"}
    sim = args_type("sim").from_cli(given)
    assert "model" not in sim and sim["log_path"] == tmp_path / "simulator.log"
    assert args_type("ollama").from_cli(given)["model"] == "m"
