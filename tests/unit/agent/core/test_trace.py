from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.core.errors import ConfigError
from agent.core.scenario import Scenario
from agent.core.trace import HASH_BLOCK_TOKENS, PromptSynth, load_trace, trace_requests, write_trace

AZURE = Path(__file__).resolve().parents[3] / "data" / "azure_llm_inference_conv_head100.csv"


class WordCodec:
    """A toy tokenizer: one token per character, ids are code points."""

    async def tokenize(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    async def detokenize(self, ids: list[int]) -> str:
        return "".join(map(chr, ids))


def test_azure_sample_imports_with_offsets_from_zero(tmp_path: Path) -> None:
    items = load_trace(AZURE)
    assert len(items) == 100
    assert items[0].timestamp == 0.0
    assert items[-1].timestamp == pytest.approx(42.685, abs=0.01)  # 18:15:46.68059 → 18:16:29.36581
    assert (items[0].prompt_tokens, items[0].output_tokens) == (374, 44)
    out = tmp_path / "t.jsonl"
    write_trace(items, out)
    assert load_trace(out) == items


def test_mooncake_lines_convert_ms_and_keep_hash_ids(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    lines = [
        {"timestamp": 0, "input_length": 700, "output_length": 12, "hash_ids": [0, 1]},
        {"timestamp": 1500, "input_length": 600, "output_length": 3, "hash_ids": [0, 2]},
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    items = load_trace(path)
    assert [i.timestamp for i in items] == [0.0, 1.5]
    assert items[1].hash_ids == [0, 2] and items[1].prompt_tokens == 600


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('{"timestamp": 0, "output_tokens": 3}\n', "prompt text or prompt_tokens"),
        ('{"timestamp": 0, "prompt": "x", "output_tokens": 3}\nnot json\n', "not JSON"),
        (
            '{"timestamp": 2, "prompt": "x", "output_tokens": 3}\n'
            '{"timestamp": 1, "prompt": "y", "output_tokens": 1}\n',
            "back in time",
        ),
        ('{"timestamp": 0, "prompt": "x", "output_tokens": 3, "colour": 1}\n', "colour"),
        (
            '{"timestamp": 0, "prompt": "x", "output_tokens": 3}\n'
            '{"timestamp": 1764600000, "prompt": "y", "output_tokens": 1}\n',
            "7-day horizon",
        ),
        ('{"timestamp": Infinity, "prompt": "x", "output_tokens": 3}\n', "timestamp"),
        ('{"timestamp": 0, "input_length": -5, "output_length": 3}\n', "cannot be negative"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,-3,2\n", "cannot be negative"),
    ],
)
def test_bad_traces_name_the_problem_and_line(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / ("bad.csv" if body.startswith("TIMESTAMP") else "bad.jsonl")
    path.write_text(body)
    with pytest.raises(ConfigError, match=message) as info:
        load_trace(path)
    assert str(path) in str(info.value)


async def test_synthetic_prompts_have_the_requested_length_and_shared_blocks() -> None:
    synth = PromptSynth("the quick brown fox jumps over the lazy dog. " * 50, WordCodec())
    await synth.prepare()
    assert synth.exact
    a, b = await synth.build(300, 0), await synth.build(300, 1)
    assert len(a) == len(b) == 300 and a != b  # different starting points: no shared cached prefix
    x = await synth.build(HASH_BLOCK_TOKENS + 100, 0, hash_ids=[7, 8])
    y = await synth.build(HASH_BLOCK_TOKENS + 100, 1, hash_ids=[7, 9])
    assert x[:HASH_BLOCK_TOKENS] == y[:HASH_BLOCK_TOKENS] and x != y
    estimated = PromptSynth("abcd" * 10)
    await estimated.prepare()
    assert not estimated.exact and len(await estimated.build(10, 0)) == 40


async def test_trace_requests_carry_lengths_sessions_and_the_scenarios_settings(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(
        '{"timestamp": 0, "prompt_tokens": 20, "output_tokens": 5, "session_id": "s1"}\n'
        '{"timestamp": 1, "prompt": "hello there", "output_tokens": 2}\n'
    )
    sc = Scenario.model_validate(
        {"name": "c", "prompts": ["p"], "system": "be brief", "sampling": {"seed": 1}}
    )
    synth = PromptSynth("lorem ipsum dolor sit amet " * 10, WordCodec())
    await synth.prepare()
    reqs = await trace_requests(load_trace(path), sc, synth)
    assert [r.max_tokens for r in reqs] == [5, 2]
    assert reqs[0].prompt_tokens_target == 20 and reqs[0].session_id == "s1"
    assert reqs[0].messages is not None and reqs[0].messages[0] == {"role": "system", "content": "be brief"}
    assert len(reqs[0].messages[1]["content"]) == 20 and reqs[1].messages is not None
    assert reqs[1].messages[1]["content"] == "hello there" and reqs[1].sampling == {"seed": 1}
