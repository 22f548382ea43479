"""Backends: one protocol, a registry, and the concrete clients and engines behind it."""

from __future__ import annotations

from agent.backends.base import Backend, BackendArgs, available, create, register

__all__ = ["Backend", "BackendArgs", "available", "create", "register"]
