"""infermeter's runtime: scenarios in, per-request records with wall and native clocks out."""

from __future__ import annotations

__all__ = ["__version__"]


def __getattr__(name: str) -> str:
    """``__version__``, read from the installed distribution on first use.

    Looked up lazily: ``importlib.metadata`` brings the email and zip machinery with it, which a load
    client streaming hundreds of responses should not carry for a string it never prints.
    """
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import metadata

    try:
        version = metadata.version("infermeter")
    except metadata.PackageNotFoundError:  # running from a checkout that was never installed
        version = "0.0.0+unknown"
    globals()["__version__"] = version
    return version
