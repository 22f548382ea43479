"""The in-process backend sends the built-in model the very prompt llama.cpp builds for it.

The built-in GGUF has no chat template; llama.cpp formats chats with its own ``gemma`` format. The
transformers backend carries that format as a Jinja template, and a backend comparison is only fair if
both engines see the same tokens — so the real engine's ``/apply-template`` and ``/tokenize`` are the
reference here.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from agent.backends import create
from agent.backends.builtin_model import BUILTIN_FILE, GEMMA_CHAT_TEMPLATE, ensure_builtin_model

pytestmark = pytest.mark.slow

CHATS = [
    [{"role": "user", "content": "Name three colours."}],
    [{"role": "system", "content": " Be brief. "}, {"role": "user", "content": "Name three colours.\n"}],
    [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "again"},
    ],
    [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "system", "content": "T"},
        {"role": "user", "content": "c"},
    ],
]


async def _engine_prompts(cache_dir: Path) -> list[tuple[str, list[int]]]:
    backend = create("embedded", {"cache_dir": cache_dir, "threads": 2})
    await backend.start()
    out = []
    try:
        base = str(backend.base_url)  # type: ignore[attr-defined]
        async with aiohttp.ClientSession() as session:
            for messages in CHATS:
                async with session.post(base + "/apply-template", json={"messages": messages}) as resp:
                    prompt = (await resp.json())["prompt"]
                body = {"content": prompt, "add_special": True}
                async with session.post(base + "/tokenize", json=body) as resp:
                    out.append((prompt, (await resp.json())["tokens"]))
    finally:
        await backend.close()
    return out


def test_the_transformers_chat_prompt_is_llama_cpps_token_for_token(cache_dir: Path) -> None:
    from transformers import AutoTokenizer

    path = ensure_builtin_model(cache_dir)
    assert path.name == BUILTIN_FILE
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    assert not tok.chat_template  # the file has none: the template is ours
    tok.chat_template = GEMMA_CHAT_TEMPLATE
    for messages, (prompt, ids) in zip(CHATS, asyncio.run(_engine_prompts(cache_dir)), strict=True):
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert text == tok.bos_token + prompt
        ours = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ours = ours if isinstance(ours, list) else ours["input_ids"]
        assert list(ours) == ids
