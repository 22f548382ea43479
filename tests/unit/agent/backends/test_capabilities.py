"""Each backend's optional abilities are protocols it satisfies by defining the method, and nothing else."""

from __future__ import annotations

from typing import Any

import pytest

from agent.backends import create
from agent.backends.capabilities import (
    BatchPrefilling,
    CacheReset,
    ContextBound,
    PrefixCacheResetting,
    ServesMetrics,
    Warming,
    WarmPass,
)
from agent.core.trace import TokenCodec

ABILITIES = (BatchPrefilling, Warming, ServesMetrics, PrefixCacheResetting, ContextBound, TokenCodec)

BACKENDS: list[tuple[str, dict[str, Any], set[str]]] = [
    (
        "openai",
        {"base_url": "http://127.0.0.1:9/v1", "model": "m"},
        {"ServesMetrics", "PrefixCacheResetting", "ContextBound", "TokenCodec"},
    ),
    ("embedded", {}, {"ServesMetrics", "PrefixCacheResetting", "ContextBound", "TokenCodec"}),
    ("transformers", {"model": "tiny"}, {"BatchPrefilling", "Warming", "TokenCodec"}),
    ("sim", {}, {"TokenCodec"}),
    ("ollama", {"model": "m"}, set()),
]


@pytest.mark.parametrize(("name", "args", "abilities"), BACKENDS, ids=[b[0] for b in BACKENDS])
def test_each_backend_has_the_abilities_it_defines(
    name: str, args: dict[str, Any], abilities: set[str]
) -> None:
    backend = create(name, args)
    assert {a.__name__ for a in ABILITIES if isinstance(backend, a)} == abilities


def test_evidence_keeps_the_manifests_shape() -> None:
    assert CacheReset(ok=True, how="vllm: POST /reset_prefix_cache").to_dict() == {
        "ok": True,
        "how": "vllm: POST /reset_prefix_cache",
    }
    assert CacheReset(ok=False, how=None, why="no way").to_dict() == {
        "ok": False,
        "how": None,
        "why": "no way",
    }
    warm = WarmPass(1500.0, 1.25, 2, 1, 3, 2, 0, 0)
    assert list(warm.to_dict()) == [
        "ms",
        "compile_s",
        "prompt_shapes",
        "batch_shapes",
        "frames_compiled",
        "graphs",
        "recompiles",
        "graph_breaks",
    ]
    assert warm.line() == (
        "compiled and warmed before the clock: 1.5 s (1.2 s compiling), 2 prompt shapes, 1 batch shapes, "
        "3 frames compiled, 0 graph breaks"
    )
