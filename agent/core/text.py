r"""Text a server chose, made safe to keep and to show.

A server can send any code point JSON can spell: lone surrogates (``"\\ud800"``, which no UTF-8 file
can hold), NUL and other control characters (terminal escape sequences among them), and bytes that
are not UTF-8 (decoded to U+FFFD). A record keeps such text with each offending character replaced by
U+FFFD and says so (``text_sanitized``); nothing a server sends can cost a record.

Showing text is a second step with one function per medium: ``for_terminal`` (no escape sequence or
markup reaches a console), ``md_cell`` (a Markdown table cell that stays one cell and holds no HTML).
HTML pages escape through their templates (``analysis.render.html``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["REPLACEMENT", "clean", "clean_obj", "for_terminal", "is_clean", "md_cell"]

REPLACEMENT = "\ufffd"

#: What a record never keeps as it is: C0 controls but tab, newline and carriage return; DEL; C1
#: controls (0x80-0x9f, where 0x9b alone starts a terminal escape sequence); lone surrogates.
_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
#: What shows the text was not what the server meant: an unsafe character, or bytes that were not
#: UTF-8 already replaced when decoded.
_FLAGGED = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffd]")
#: Everything a terminal could act on: every control character, newlines included.
_TERMINAL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def is_clean(text: str) -> bool:
    """Whether ``text`` holds nothing to replace and no sign of bytes that were replaced."""
    return (text.isascii() and text.isprintable()) or _FLAGGED.search(text) is None


def clean(text: str) -> str:
    """``text`` with every character a record cannot keep as it is replaced by U+FFFD."""
    return _UNSAFE.sub(REPLACEMENT, text)


def clean_obj(obj: Any) -> Any:
    """A copy of a JSON-like value with every string (keys included) cleaned."""
    if isinstance(obj, str):
        return clean(obj)
    if isinstance(obj, Mapping):
        return {clean(str(k)): clean_obj(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [clean_obj(v) for v in obj]
    return obj


def for_terminal(text: object) -> str:
    """``text`` for a terminal: every control character (escape sequences' start) shown as U+FFFD.

    Put it in a ``rich.text.Text`` (never in a markup string), so brackets print as they are too.
    """
    return _TERMINAL.sub(REPLACEMENT, str(text))


def md_cell(text: object) -> str:
    """``text`` as one Markdown table cell: one line, ``|`` escaped, no HTML, no control characters."""
    flat = " ".join(clean(str(text)).split())
    return flat.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
