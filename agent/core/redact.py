"""Secrets never leave the process: API keys, tokens and URL passwords masked wherever text goes out.

That is the manifest, the summary, records' failure details, logs and the daemon's ``/status``.
Three nets, in order: values the process was told are secret (``remember``: every backend argument
or setting named like a key, token or password); the password part of a URL (``user:pass@host``);
``KEY=VALUE`` or ``KEY: VALUE`` text whose key names a secret. A mapping's value under such a key is
masked whole.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["MASK", "is_secret_key", "redact", "redact_obj", "remember"]

MASK = "***"

#: Names that hold secrets: ``api_key``, ``password``, ``client_secret``, ``hf_token``, ``access_token``…
#: but not figures that merely end in "token" (``j_per_token``, ``max_tokens``).
_SECRET_WORD = (
    r"(?:api[_-]?key|secret|password|passwd|authorization|credentials?"
    r"|(?:access|auth|bearer|api|hf|refresh|session|private|id)[_-]?token|(?<![A-Za-z0-9_.-])token)"
)
_SECRET_KEY = re.compile(rf"^(?:.*[_.-])?{_SECRET_WORD}$", re.IGNORECASE)
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/\s:@]*):(?P<pw>[^/\s@]+)@")
_KEY_VALUE = re.compile(
    rf"(?P<key>\b[A-Za-z0-9_.-]*?{_SECRET_WORD})(?P<sep>\"?\s*[=:]\s*\"?)(?P<value>(?:Bearer\s+)?[^\s&,;'\"]+)",
    re.IGNORECASE,
)
_known: set[str] = set()


def remember(value: object) -> None:
    """Treat ``value`` as a secret from now on (too short a value would mask ordinary text: skipped)."""
    if hasattr(value, "get_secret_value"):
        value = value.get_secret_value()
    if isinstance(value, str) and len(value) >= 4:
        _known.add(value)


def is_secret_key(key: object) -> bool:
    """Whether a setting or argument named ``key`` holds a secret (``api_key``, ``hf_token`` …)."""
    return isinstance(key, str) and bool(_SECRET_KEY.match(key))


def redact(text: str) -> str:
    """``text`` with every secret it shows masked."""
    for value in _known:
        if value in text:
            text = text.replace(value, MASK)
    if "@" in text:
        text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    if "=" in text or ":" in text:
        text = _KEY_VALUE.sub(lambda m: f"{m['key']}{m['sep']}{MASK}", text)
    return text


def redact_obj(obj: Any) -> Any:
    """A copy of a JSON-like value with every string redacted and every secret-named key's value masked."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, Mapping):
        return {
            k: (MASK if is_secret_key(k) and v not in (None, "") else redact_obj(v)) for k, v in obj.items()
        }
    if isinstance(obj, list | tuple):
        return [redact_obj(v) for v in obj]
    if hasattr(obj, "get_secret_value"):
        return MASK
    return obj
