"""Workloads against the real llama.cpp engine serving the real Gemma 3 270M: exact synthetic lengths at the
server, ShareGPT first turns and whole conversations, a shared prefix served from the prompt cache, and a
Parquet dataset read through Hugging Face ``datasets``."""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import read_records, run_cli

pytestmark = pytest.mark.slow

QUIET = ["--no-progress", "--energy", "off"]


def steady(out: Path) -> list[dict[str, Any]]:
    return [r for r in read_records(out) if r["stage"] == "steady"]


def summary(out: Path, name: str) -> dict[str, Any]:
    return json.loads((out / "summary.json").read_text())["scenarios"][name]


def test_seeded_synthetic_prompts_count_their_drawn_length_at_the_server(
    tmp_path: Path, cache_dir: Path
) -> None:
    """512 ± 64 tokens in, 32 out: on completions the server's count is the drawn length (BOS included);
    on chat the template is measured apart and the length is the content's, as asked."""
    flags = [
        "--input-tokens",
        "512+-64",
        "--output-tokens",
        "32",
        "--workload-seed",
        "7",
        "--requests",
        "6",
        "--warmup",
        "0",
        "--concurrency",
        "2",
        *QUIET,
    ]
    done = run_cli(
        ["run", "chat", "--endpoint", "completions", *flags, "--out", str(tmp_path / "c")], cache_dir
    )
    assert done.returncode == 0, done.stderr
    recs = steady(tmp_path / "c")
    assert len(recs) == 6 and len({r["requested_prompt_tokens"] for r in recs}) > 1
    for r in recs:
        assert r["status"] == "ok" and 320 <= r["requested_prompt_tokens"] <= 704
        assert abs(r["prompt_tokens"] - r["requested_prompt_tokens"]) <= 1, r
        assert r["output_tokens"] == r["requested_output_tokens"] == 32
    workload = summary(tmp_path / "c", "chat")["workload"]
    n = workload["prompt"]["n"]  # the steady ok requests, the cold first one apart
    assert n >= 5 and workload["prompt"]["within_one"] == n and workload["output"]["exact"] == n
    facts = json.loads((tmp_path / "c" / "manifest.json").read_text())["workload"]["chat"]
    assert facts["lengths"] == "server tokenizer" and facts["template_tokens"] == 1  # Gemma's <bos>

    again = run_cli(
        ["run", "chat", *flags, "--length-of", "content", "--out", str(tmp_path / "t")], cache_dir
    )
    assert again.returncode == 0, again.stderr
    chat = steady(tmp_path / "t")
    for r in chat:
        template = r["template_tokens"]
        assert template > 5  # the system prompt and the chat template's own tokens
        assert abs(r["prompt_tokens"] - r["requested_prompt_tokens"]) <= 1  # content + template at the server
    drawn = sorted(r["requested_prompt_tokens"] - r["template_tokens"] for r in chat)
    assert drawn == sorted(r["requested_prompt_tokens"] for r in recs)  # the same seed, the same lengths


def sharegpt(path: Path) -> Path:
    """A small file in ShareGPT's layout, written here: three conversations of three turns."""
    topics = ["lighthouses", "rivers", "bread"]
    rows = []
    for i, topic in enumerate(topics):
        turns = []
        for k in range(3):
            turns.append({"from": "human", "value": f"Tell me fact number {k + 1} about {topic}, please."})
            turns.append({"from": "gpt", "value": " ".join(["A short answer about", topic] * (k + 2 + i))})
        rows.append({"id": f"conv-{topic}", "conversations": turns})
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def test_a_sharegpt_file_runs_as_first_turns_and_as_whole_conversations(
    tmp_path: Path, cache_dir: Path
) -> None:
    data = sharegpt(tmp_path / "sg.json")
    single = run_cli(
        [
            "run",
            "chat",
            "--dataset",
            str(data),
            "--requests",
            "3",
            "--warmup",
            "0",
            *QUIET,
            "--out",
            str(tmp_path / "one"),
        ],
        cache_dir,
    )
    assert single.returncode == 0, single.stderr
    recs = steady(tmp_path / "one")
    assert {r["prompt_id"] for r in recs} == {"conv-lighthouses", "conv-rivers", "conv-bread"}
    assert len({r["requested_output_tokens"] for r in recs}) == 3  # each answer's own length
    for r in recs:
        assert r["output_tokens"] == r["requested_output_tokens"] and r["turn"] is None
        assert abs(r["prompt_tokens"] - r["requested_prompt_tokens"]) <= 1

    multi = run_cli(
        [
            "run",
            "chat",
            "--dataset",
            str(data),
            "--turns",
            "all",
            "--requests",
            "3",
            "--warmup",
            "0",
            "--concurrency",
            "2",
            "--output-tokens",
            "8",
            *QUIET,
            "--out",
            str(tmp_path / "all"),
        ],
        cache_dir,
    )
    assert multi.returncode == 0, multi.stderr
    by_conv: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in steady(tmp_path / "all"):
        assert r["status"] == "ok"
        by_conv[r["conversation_id"]].append(r)
    assert len(by_conv) == 3
    for turns in by_conv.values():
        turns.sort(key=lambda r: r["turn"])
        assert [r["turn"] for r in turns] == [0, 1, 2]
        sizes = [r["prompt_tokens"] for r in turns]
        # each turn holds the ones before it: the last prompt, its answer and the next question
        for before, after in itertools.pairwise(turns):
            assert after["prompt_tokens"] > before["prompt_tokens"] + before["output_tokens"], sizes
    talks = summary(tmp_path / "all", "chat")["conversations"]
    assert talks["conversations"] >= 2 and [t["key"] for t in talks["by_turn"]] == ["0", "1", "2"]


def test_a_shared_prefix_is_served_from_the_prompt_cache_faster(tmp_path: Path, cache_dir: Path) -> None:
    """Three groups of three prompts sharing 384 tokens, one after another, the prompt cache on."""
    out = tmp_path / "p"
    done = run_cli(
        [
            "run",
            "shared_prefix",
            "--prefix-groups",
            "3",
            "--prefix-tokens",
            "384",
            "--prompts-per-group",
            "3",
            "--requests",
            "9",
            *QUIET,
            "--out",
            str(out),
        ],
        cache_dir,
    )
    assert done.returncode == 0, done.stderr
    recs = steady(out)
    assert [r["prefix_group"] for r in recs] == ["g000"] * 3 + ["g001"] * 3 + ["g002"] * 3
    for i, r in enumerate(recs):
        if i % 3:  # later members of a group find its prefix in the cache
            assert r["cached_prompt_tokens"] >= 384, r
    cache = summary(out, "shared_prefix")["prefix_cache"]
    assert cache["hits"] >= 6 and cache["ttft_miss_ms"]["n"] >= 2
    assert cache["ttft_hit_ms"]["p50"] < cache["ttft_miss_ms"]["p50"]


def test_a_parquet_dataset_is_read_through_hugging_face_datasets(tmp_path: Path, cache_dir: Path) -> None:
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "qa"
    folder.mkdir()
    rows = {
        "question": ["What is the capital of France?", "Name a prime number.", "What colour is the sky?"],
        "reply_len": [6, 7, 8],
    }
    datasets.Dataset.from_dict(rows).to_parquet(str(folder / "train-00000.parquet"))
    out = tmp_path / "d"
    done = run_cli(
        [
            "run",
            "chat",
            "--dataset",
            str(folder),
            "--column",
            "prompt=question",
            "--column",
            "output_tokens=reply_len",
            "--requests",
            "3",
            "--warmup",
            "0",
            *QUIET,
            "--out",
            str(out),
        ],
        cache_dir,
    )
    assert done.returncode == 0, done.stderr
    recs = steady(out)
    assert sorted(r["output_tokens"] for r in recs) == [6, 7, 8]
    identity = json.loads((out / "manifest.json").read_text())["workload"]["chat"]["dataset"]
    assert identity["format"] == "hf" and identity["rows"] == 3 and len(identity["sha256"]) == 64
