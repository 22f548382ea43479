"""Errors infermeter raises on purpose; every message says what to do next."""

from __future__ import annotations

__all__ = [
    "BackendError",
    "BackendUnavailableError",
    "ConfigError",
    "InfermeterError",
    "RecordWriteError",
    "RequestFailedError",
    "UnknownNameError",
]


class InfermeterError(Exception):
    """Base class of every error infermeter raises on purpose."""


class ConfigError(InfermeterError):
    """A scenario, settings value or command-line argument is invalid.

    ``location`` names the file, line and field when known, so the message can point at the fix.
    """

    def __init__(self, message: str, *, location: str | None = None) -> None:
        self.location = location
        super().__init__(f"{location}: {message}" if location else message)


class UnknownNameError(ConfigError):
    """A registry was asked for a name it does not hold."""

    def __init__(self, kind: str, name: str, known: list[str]) -> None:
        import difflib

        close = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        super().__init__(f"unknown {kind} '{name}'.{hint} Known: {', '.join(sorted(known)) or 'none'}.")
        self.known = known


class BackendError(InfermeterError):
    """A backend could not be started, described or stopped."""


class BackendUnavailableError(BackendError):
    """The backend's optional dependency or server is missing; the message says how to get it."""


class RequestFailedError(InfermeterError):
    """One request failed; ``reason`` is the degraded-record reason (``http_503``, ``connection`` …)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class RecordWriteError(InfermeterError):
    """A file of records could not be written (disk full, file too large, not writable).

    Only whole lines are ever left in the file: a line cut short by the failure is taken back.
    """

    def __init__(self, path: object, error: OSError) -> None:
        self.path = path
        self.errno = error.errno
        self.strerror = error.strerror or str(error)
        super().__init__(f"cannot write {path}: {self.strerror} (errno {error.errno})")
