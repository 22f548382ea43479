"""Durations as people write them (``30``, ``"500ms"``, ``"2m"``), for every config model."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator

__all__ = ["MAX_DURATION_S", "Duration", "PositiveDuration", "parse_duration"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


#: Longest duration accepted anywhere (a year): beyond it a value is a typo, not a plan.
MAX_DURATION_S = 366 * 86400.0


def parse_duration(value: Any) -> float | None:
    """Seconds from ``30``, ``"30s"``, ``"500ms"``, ``"2m"`` or ``"1h"``; None stays None.

    Negative, infinite, NaN and absurdly long (over a year) values are refused.
    """
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"not a duration: {value!r} (use seconds or a number with ms, s, m or h)")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not 0 <= seconds <= MAX_DURATION_S:  # NaN fails this too
        raise ValueError(f"not a usable duration: {value!r} (from 0 to a year)")
    return seconds


def _positive(value: float | None) -> float | None:
    if value is not None and value <= 0:
        raise ValueError("must be a positive duration")
    return value


Duration = Annotated[float | None, BeforeValidator(parse_duration)]
#: A duration that must be more than zero when given (intervals, timeouts, back-off).
PositiveDuration = Annotated[float | None, BeforeValidator(parse_duration), AfterValidator(_positive)]
