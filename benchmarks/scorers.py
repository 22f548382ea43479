"""How fast does the analyzer score outputs? Lexical scorers one by one and per task group, and SemScore.

Samples are built from the quality suite (scenarios/data/quality.yaml): each candidate is the prompt's text
followed by its reference with the words shuffled (40–120 words, like a model's answer that echoes and
rambles), each reference is the suite's own. Every candidate is unique (an index word is appended), so
SemScore embeds every candidate; references repeat as they do across runs of the suite, and SemScore
embeds each once (``cached refs``) — the ``cold`` figure embeds both sides of every pair.

Targets (issue #8): lexical scorers ≥ 5,000 samples/s, SemScore ≥ 200 samples/s on 2 CPU cores, batched.

``python benchmarks/scorers.py [--samples 20000] [--sem-samples 2000] [--workers N]`` prints a JSON report;
SemScore figures are the best of ``--sem-repeat`` passes (all passes are listed beside it).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def corpus(n: int, seed: int = 7) -> list[tuple[str, str, str]]:
    """(task, candidate, reference) triples, every candidate unique."""
    prompts = yaml.safe_load((ROOT / "scenarios" / "data" / "quality.yaml").read_text())
    rng = random.Random(seed)
    out = []
    for i in range(n):
        p = prompts[i % len(prompts)]
        words = (p["text"] + " " + p["reference"]).split()
        rng.shuffle(words)
        out.append((p["task"], " ".join(words[: rng.randint(40, 120)]) + f" w{i}", p["reference"]))
    return out


def rate(fn: Any, pairs: list[tuple[str, str, str]], repeat: int = 3) -> float:
    """Best-of-``repeat`` samples per second of ``fn(candidate, reference)`` over ``pairs``."""
    best = 0.0
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _, c, r in pairs:
            fn(c, r)
        best = max(best, len(pairs) / (time.perf_counter() - t0))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=20_000)
    ap.add_argument("--sem-samples", type=int, default=2_000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--batch-tokens", type=int, default=2048)
    ap.add_argument("--workers", type=int, default=None, help="SemScore worker threads (default: the cores)")
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    ap.add_argument("--sem-repeat", type=int, default=3, help="SemScore passes; the best is reported")
    args = ap.parse_args()

    from analysis.quality import TASK_SCORERS
    from analysis.scorers import REGISTRY, SemScorer

    pairs = corpus(args.samples)
    words = [len(c.split()) for _, c, _ in pairs]
    report: dict[str, Any] = {
        "cpus": len(os.sched_getaffinity(0)),
        "samples": len(pairs),
        "candidate_words_mean": sum(words) / len(words),
        "lexical_samples_per_s": {},
        "task_group_lexical_samples_per_s": {},
    }
    for name, sc in REGISTRY.items():
        if sc.fn is not None:
            report["lexical_samples_per_s"][name] = round(rate(sc.fn, pairs))
    for task, names in TASK_SCORERS.items():
        fns = [REGISTRY[n].fn for n in names if REGISTRY[n].fn is not None]
        if not fns:
            continue

        def group(c: str, r: str, fns: list[Any] = fns) -> None:
            for f in fns:
                f(c, r)

        report["task_group_lexical_samples_per_s"][task] = round(rate(group, pairs))

    t0 = time.perf_counter()
    sem = SemScorer(
        batch_size=args.batch_size,
        batch_tokens=args.batch_tokens,
        workers=args.workers,
        precision=args.precision,
    )
    report["semscore_model_load_s"] = round(time.perf_counter() - t0, 2)
    sem_pairs = pairs[: args.sem_samples]
    cands = [c for _, c, _ in sem_pairs]
    sem.score_pairs([cands[0]], [sem_pairs[0][2]])  # warm the model and start the workers
    cached, cold = [], []
    for rep in range(args.sem_repeat):
        # every pass embeds all texts anew: the cache is emptied, and the cold references are new strings
        sem._cache.clear()
        t0 = time.perf_counter()
        sem.score_pairs(cands, [r for _, _, r in sem_pairs])
        cached.append(len(sem_pairs) / (time.perf_counter() - t0))  # 60 references embedded once, reused
        sem._cache.clear()
        cold_refs = [f"{r} r{rep}.{i}" for i, (_, _, r) in enumerate(sem_pairs)]
        t0 = time.perf_counter()
        sem.score_pairs(cands, cold_refs)
        cold.append(len(sem_pairs) / (time.perf_counter() - t0))
    sem.close()
    report["semscore_samples_per_s"] = {
        "batch_size": args.batch_size,
        "batch_tokens": args.batch_tokens,
        "workers": sem.workers,
        "precision": sem.precision,
        "samples": len(sem_pairs),
        "cached_refs": round(max(cached), 1),
        "cold": round(max(cold), 1),
        "cached_refs_all": [round(x, 1) for x in cached],
        "cold_all": [round(x, 1) for x in cold],
    }
    report["targets_met"] = {
        "lexical_each_ge_5000": min(report["lexical_samples_per_s"].values()) >= 5000,
        "semscore_ge_200": max(cached) >= 200,
        "semscore_cold_ge_200": max(cold) >= 200,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
