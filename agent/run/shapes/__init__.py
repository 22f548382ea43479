"""Load shapes by name: ``closed``, ``open``, ``trace``, ``chain``, ``batch``, ``conversation``.

Each is one module; a new shape is one more module that registers itself with ``register`` and is
imported here.
"""

from __future__ import annotations

from agent.run.shapes import batch, chain, closed, conversation, open  # noqa: F401 - each registers its shape
from agent.run.shapes.base import SHAPES, Driver, LoadShape, Plan, register, shape, shape_name

__all__ = ["SHAPES", "Driver", "LoadShape", "Plan", "register", "shape", "shape_name"]
