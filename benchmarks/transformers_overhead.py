"""Timing overhead of the instrumented in-process loop vs plain ``model.generate()`` (target ≤ 2 %).

All three produce exactly N greedy tokens for the same prompt on the same loaded model:
``generate()``; a bare loop (prefill forward + KV-cache decode, nothing else); and the ``transformers``
backend's instrumented loop (the same plus a timestamp, incremental detokenisation and a queue hand-off
per token, driven through ``stream()``). Runs alternate so drift hits all equally; medians are compared.

    python benchmarks/transformers_overhead.py [--model gemma3-270m|PATH] [--tokens 64] [--runs 7]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from agent.backends import create
from agent.core.record import GenerationRequest, StreamEnd

PROMPT = "Explain in plain words why latency should be reported as a distribution rather than a mean."


async def main(ns: argparse.Namespace) -> dict[str, Any]:
    args = {"model": ns.model, "threads": ns.threads, "cache_dir": ns.cache_dir}
    backend: Any = create("transformers", args)
    await backend.start()
    engine = backend._engine
    ids = engine.tok(PROMPT, return_tensors="pt").input_ids
    req = GenerationRequest(
        request_id="b", prompt=PROMPT, max_tokens=ns.tokens, ignore_eos=True, endpoint="completions"
    )

    def plain() -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = engine.model.generate(
                ids,
                max_new_tokens=ns.tokens,
                min_new_tokens=ns.tokens,
                do_sample=False,
                pad_token_id=engine.tok.pad_token_id,
            )
        assert out.shape[1] - ids.shape[1] == ns.tokens
        return time.perf_counter() - t0

    def bare() -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = engine.model(input_ids=ids, use_cache=True)
            token = out.logits[:, -1, :].argmax(dim=-1)
            for _ in range(ns.tokens - 1):
                out = engine.model(
                    input_ids=token[:, None], past_key_values=out.past_key_values, use_cache=True
                )
                token = out.logits[:, -1, :].argmax(dim=-1)
        return time.perf_counter() - t0

    async def instrumented() -> float:
        t0 = time.perf_counter()
        events = [e async for e in backend.stream(req)]
        assert isinstance(events[-1], StreamEnd) and events[-1].usage.output_tokens == ns.tokens
        return time.perf_counter() - t0

    plain()  # warm every path once
    bare()
    await instrumented()
    a, b, c = [], [], []
    for _ in range(ns.runs):
        a.append(plain())
        c.append(bare())
        b.append(await instrumented())
    await backend.close()
    pa, pb, pc = statistics.median(a), statistics.median(b), statistics.median(c)
    return {
        "model": ns.model,
        "tokens": ns.tokens,
        "runs": ns.runs,
        "threads": torch.get_num_threads(),
        "generate_median_s": round(pa, 4),
        "bare_loop_median_s": round(pc, 4),
        "instrumented_median_s": round(pb, 4),
        "overhead_vs_generate_pct": round((pb / pa - 1) * 100, 2),
        "overhead_vs_bare_loop_pct": round((pb / pc - 1) * 100, 2),
        "runs_s": {
            "generate": [round(x, 4) for x in a],
            "bare_loop": [round(x, 4) for x in c],
            "instrumented": [round(x, 4) for x in b],
        },
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="gemma3-270m")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "infermeter")
    print(json.dumps(asyncio.run(main(p.parse_args())), indent=2))
