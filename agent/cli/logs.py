"""Logging: structlog to standard error, every event redacted before it is rendered.

Tracebacks are rendered as plain text by ``format_exc_info`` first, so they pass the same redaction as
every other field; no traceback is ever printed with its frames' local variables.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

from agent.cli.settings import Settings
from agent.core.redact import redact_obj

__all__ = ["configure_logging"]


def _redact_event(_: Any, __: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
    """Mask secrets in every log event before it is rendered."""
    return {k: redact_obj(v) if isinstance(v, str | dict | list | tuple) else v for k, v in event.items()}


def configure_logging(settings: Settings) -> None:
    """Log through structlog at the settings' level as console or JSON lines, secrets masked."""
    level = getattr(logging, settings.log_level.upper(), logging.WARNING)
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if settings.log_json
        else structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback)
    )
    structlog.configure(
        processors=[
            # a traceback becomes plain text (never one with locals) before redaction, so it is masked too
            structlog.processors.format_exc_info,
            _redact_event,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()),  # type: ignore[arg-type]  # file-like
    )


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is when a line is logged, not the one there at configuration.

    A redirect (or a test's capture) can replace and close the stream the logger was configured with;
    log lines then still go where standard error goes now instead of failing on a closed file.
    """

    def write(self, text: str) -> int:
        """Write ``text`` to the current standard error."""
        return sys.stderr.write(text)

    def flush(self) -> None:
        """Flush the current standard error."""
        sys.stderr.flush()
