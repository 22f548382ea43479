"""What every command shares: the app context, exit codes, value parsers, one-line errors, the event loop."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import yaml
from rich.console import Console
from rich.text import Text

from agent.cli.settings import Settings
from agent.core.errors import ConfigError
from agent.core.redact import redact
from agent.core.scenario import parse_duration

__all__ = [
    "EXIT_CONFIG",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_REGRESSION",
    "App",
    "duration",
    "error",
    "kv",
    "port",
    "run_loop",
    "seconds",
    "warn",
]

#: 0 done; 1 failed (records could not be written, nothing to calibrate); 2 bad input; 3 ``analyze
#: --fail-on`` found what it was told to fail on; 128 + n stopped by signal n.
EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_REGRESSION = 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
class App:
    """What a command is given besides its arguments: the settings and the standard-error console."""

    settings: Settings
    err: Console


def error(err: Console, message: object) -> None:
    """One unwrapped line, no markup interpretation: paths and brackets print as they are."""
    err.print(Text.assemble(("error: ", "bold red"), redact(str(message))), soft_wrap=True)


def warn(err: Console, message: object) -> None:
    """One unwrapped warning line, printed as it is."""
    err.print(Text.assemble(("warning: ", "yellow"), str(message)), soft_wrap=True)


def kv(items: list[str], flag: str) -> dict[str, object]:
    """``KEY=VALUE`` pairs with YAML-typed values."""
    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            problem = getattr(e, "problem", None) or "not a YAML value"
            raise ConfigError(f"{flag} {item!r}: {problem} (quote the value if it is text)") from e
    return out


def duration(value: str | None, flag: str) -> float | None:
    """A duration flag in seconds (None when not given); a bad one is a one-line ConfigError."""
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as e:
        raise ConfigError(f"{flag}: {e}") from e


def seconds(value: str, flag: str) -> float:
    """A positive duration flag in seconds; anything else is a one-line ConfigError."""
    try:
        seconds = parse_duration(value)
    except ValueError as e:
        raise ConfigError(f"{flag}: {e}") from e
    if not seconds or seconds <= 0:
        raise ConfigError(f"{flag} must be a positive duration, got {value!r}")
    return seconds


def port(value: str) -> int:
    """A TCP port, 0 to 65535 (0 lets the system pick)."""
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is outside 0-65535")
    return port


def run_loop(coro: Coroutine[Any, Any, int]) -> int:
    """Run a command's coroutine on uvloop where it is installed, else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)
