"""Workload prompts made with a tokenizer: exact lengths after merges at the cut, seeded, template apart."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest

from agent.core.scenario import Scenario
from agent.run.prompts import Cutter, make_prompts, prepare_workloads

PROSE = "the thin thread through the thicket then thawed; " * 40


class PlainCodec:
    """Characters, except that 'th' is one token: a cut between 't' and 'h' merges when counted again."""

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {"th": 0}
        self.calls = 0

    def _split(self, text: str) -> list[str]:
        out, i = [], 0
        while i < len(text):
            step = 2 if text.startswith("th", i) else 1
            out.append(text[i : i + step])
            i += step
        return out

    async def tokenize(self, text: str) -> list[int]:
        self.calls += 1
        return [self.vocab.setdefault(p, len(self.vocab)) for p in self._split(text)]

    async def detokenize(self, ids: list[int]) -> str:
        by_id = {v: k for k, v in self.vocab.items()}
        return "".join(by_id[i] for i in ids)


class MergingCodec(PlainCodec):
    """The same tokenizer, which also gives each token's text (as llama.cpp does)."""

    def __init__(self, pieces: bool = True) -> None:
        super().__init__()

    async def token_pieces(self, text: str) -> list[tuple[int, str]] | None:
        return [(self.vocab.setdefault(p, len(self.vocab)), p) for p in self._split(text)]


class ChatServer(MergingCodec):
    """Also counts a whole chat prompt: a fixed template of 7 tokens around the content, plus a BOS."""

    async def count_prompt(
        self, *, text: str | None = None, messages: list[dict[str, str]] | None = None
    ) -> int:
        if messages is None:
            return 1 + len(await self.tokenize(text or ""))
        body = 0
        for m in messages:
            body += len(await self.tokenize(m["content"]))
        return 1 + 7 * len(messages) + body


@pytest.mark.parametrize("pieces", [True, False])
def test_every_cut_counts_exactly_the_length_asked_even_where_tokens_merge(pieces: bool) -> None:
    async def go() -> None:
        codec = MergingCodec() if pieces else PlainCodec()
        cutter = Cutter(PROSE, codec)
        await cutter.prepare()
        for n in range(1, 60):
            for start in (0, 1, 5, 17):
                text = await cutter.cut(n, start)
                assert len(await codec.tokenize(text)) == n, (n, start, text)
        assert not cutter.off

    asyncio.run(go())


def scenario(workload: dict, endpoint: str = "completions", **extra: object) -> Scenario:
    return Scenario.model_validate(
        {"name": "w", "endpoint": endpoint, "requests": 40, "warmup": 0, "workload": workload, **extra}
    )


def test_a_synthetic_workload_is_the_same_for_the_same_seed_and_counts_the_bos() -> None:
    spec = {"kind": "synthetic", "input_tokens": "30+-8", "output_tokens": "5-9", "seed": 3, "corpus": None}

    async def made(seed: int) -> list:
        sc = scenario({**spec, "seed": seed})
        facts = await make_prompts(sc, ChatServer(pieces=True))
        assert (
            facts["exact"] == 40 and facts["template_tokens"] == 1 and facts["lengths"] == "server tokenizer"
        )
        return sc.made or []

    first, again, other = (asyncio.run(made(s)) for s in (3, 3, 4))
    assert [(p.text, p.max_tokens, p.prompt_tokens) for p in first] == [
        (p.text, p.max_tokens, p.prompt_tokens) for p in again
    ]
    assert [p.text for p in first] != [p.text for p in other]
    codec = ChatServer(pieces=True)
    for p in first:  # the whole prompt at the server (BOS + content) is the drawn length
        assert asyncio.run(codec.count_prompt(text=p.text)) == p.prompt_tokens
        assert 5 <= (p.max_tokens or 0) <= 9


@pytest.mark.parametrize("length_of", ["prompt", "content"])
def test_on_chat_the_template_is_measured_apart_and_the_length_means_what_the_user_chose(
    length_of: str,
) -> None:
    sc = scenario(
        {"kind": "synthetic", "input_tokens": 40, "length_of": length_of}, endpoint="chat", system="Be kind."
    )
    server = ChatServer(pieces=True)
    facts = asyncio.run(make_prompts(sc, server))
    template = facts["template_tokens"]
    assert template == 1 + 7 * 2 + len("Be kind.")
    for req in list(itertools.islice(sc.requests_iter(), 5)):
        at_server = asyncio.run(server.count_prompt(messages=req.messages))
        assert req.prompt_tokens_target == at_server and req.template_tokens == template
        content = at_server - template
        assert (content == 40) if length_of == "content" else (at_server == 40)


def test_shared_prefix_prompts_share_their_groups_prefix_in_the_chosen_order() -> None:
    wl = {
        "kind": "shared_prefix",
        "groups": 3,
        "prefix_tokens": 50,
        "suffix_tokens": 10,
        "prompts_per_group": 4,
        "order": "runs",
    }
    sc = scenario(wl)
    asyncio.run(make_prompts(sc, MergingCodec(pieces=True)))
    made = sc.made or []
    assert [p.group for p in made] == ["g000"] * 4 + ["g001"] * 4 + ["g002"] * 4
    heads = {p.group: p.text[:45] for p in made}
    assert all(p.text.startswith(heads[p.group]) for p in made) and len(set(heads.values())) == 3
    assert len({p.text for p in made}) == len(made)
    sc2 = scenario({**wl, "order": "interleaved"})
    asyncio.run(make_prompts(sc2, MergingCodec(pieces=True)))
    assert [p.group for p in (sc2.made or [])][:4] == ["g000", "g001", "g002", "g000"]


def test_a_dataset_asks_for_each_answers_length_and_filters_by_length(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(
        "".join(f'{{"prompt": "{"q" * n}", "answer": "{"a" * (n + 2)}"}}\n' for n in range(1, 30))
    )
    sc = scenario(
        {
            "kind": "dataset",
            "path": str(path),
            "min_prompt_tokens": 5,
            "max_prompt_tokens": 20,
            "sample": 10,
            "seed": 1,
        }
    )
    sc.load_data(tmp_path)
    asyncio.run(make_prompts(sc, MergingCodec(pieces=True)))
    made = sc.made or []
    assert len(made) == 10
    for p in made:
        assert 5 <= len(p.text) <= 20 and p.max_tokens == len(p.text) + 2


def test_identical_workloads_of_several_stages_are_made_once() -> None:
    base = scenario({"kind": "synthetic", "input_tokens": 20})
    stages = [base.derive(base.normalised() | {"concurrency": c}, location="stage") for c in (1, 2, 4)]
    codec = MergingCodec(pieces=True)
    asyncio.run(prepare_workloads(stages, codec))
    calls = codec.calls
    assert all(s.made is stages[0].made for s in stages) and calls > 0


def test_a_local_tokenizer_file_cuts_exact_lengths_for_a_server_without_one(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([PROSE] * 4, trainers.BpeTrainer(vocab_size=300, special_tokens=["[UNK]", "<s>"]))
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    sc = scenario({"kind": "synthetic", "input_tokens": "20-60", "tokenizer": str(path)})
    facts = asyncio.run(make_prompts(sc, object()))  # a backend with no tokenizer of its own
    assert facts["lengths"] == "local tokenizer" and facts["exact"] == 40
    for p in sc.made or []:
        assert len(tok.encode(p.text, add_special_tokens=False).ids) == p.prompt_tokens
