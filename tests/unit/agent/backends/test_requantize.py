"""Re-quantisation writes what the gguf package's own quantiser makes and keeps every other tensor."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from agent.backends.modelfacts import gguf_facts
from agent.backends.requantize import requantize, requantized_path
from agent.core.errors import ConfigError


def _source(path: Path) -> dict[str, np.ndarray]:
    """A small llama-shaped GGUF: an embedding, one Q8_0 block weight, one F32 matrix, one norm."""
    rng = np.random.default_rng(3)
    tensors = {
        "token_embd.weight": rng.normal(size=(16, 64)).astype(np.float32),
        "blk.0.attn_q.weight": rng.normal(size=(8, 64)).astype(np.float32),
        "blk.0.ffn_up.weight": rng.normal(size=(4, 96)).astype(np.float32),
        "blk.0.attn_norm.weight": rng.normal(size=(64,)).astype(np.float32),
    }
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("tiny")
    w.add_context_length(128)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    w.add_token_list(["<s>", "a", "b"])
    q8 = gguf.GGMLQuantizationType.Q8_0
    w.add_tensor("token_embd.weight", gguf.quants.quantize(tensors["token_embd.weight"], q8), raw_dtype=q8)
    w.add_tensor(
        "blk.0.attn_q.weight", gguf.quants.quantize(tensors["blk.0.attn_q.weight"], q8), raw_dtype=q8
    )
    w.add_tensor("blk.0.ffn_up.weight", tensors["blk.0.ffn_up.weight"])
    w.add_tensor("blk.0.attn_norm.weight", tensors["blk.0.attn_norm.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tensors


def test_block_weights_become_the_reference_q4_0_and_the_rest_is_kept(tmp_path: Path) -> None:
    src = tmp_path / "tiny-q8_0.gguf"
    _source(src)
    before = {t.name: t for t in gguf.GGUFReader(src).tensors}
    dst = requantize(src, "Q4_0", requantized_path(src, "q4_0", tmp_path / "cache"))
    assert dst.name.startswith("tiny-q8_0.requant-Q4_0-") and dst.parent == tmp_path / "cache"
    after = {t.name: t for t in gguf.GGUFReader(dst).tensors}
    q4 = gguf.GGMLQuantizationType.Q4_0
    for name in ("blk.0.attn_q.weight", "blk.0.ffn_up.weight"):
        src_values = gguf.quants.dequantize(before[name].data, before[name].tensor_type)
        assert after[name].tensor_type == q4
        assert np.array_equal(np.asarray(after[name].data), gguf.quants.quantize(src_values, q4))
        assert list(after[name].shape) == list(before[name].shape)
    embd = "token_embd.weight"  # the tied output layer keeps its type and bytes
    assert after[embd].tensor_type == gguf.GGMLQuantizationType.Q8_0
    assert np.array_equal(np.asarray(after[embd].data), np.asarray(before[embd].data))
    norm = "blk.0.attn_norm.weight"
    assert np.array_equal(np.asarray(after[norm].data), np.asarray(before[norm].data))
    facts = gguf_facts(dst)
    assert facts["quantization"] == "Q4_0" and facts["requantized_from"] == "tiny-q8_0.gguf (Q8_0)"
    assert facts["name"] == "tiny" and facts["context_length"] == 128 and facts["architecture"] == "llama"
    tokens = gguf.GGUFReader(dst).fields["tokenizer.ggml.tokens"].contents()
    assert tokens == ["<s>", "a", "b"]


def test_pure_quantises_the_embedding_too_and_a_made_file_is_reused(tmp_path: Path) -> None:
    src = tmp_path / "tiny.gguf"
    _source(src)
    dst = requantized_path(src, "Q8_0", tmp_path, pure=True)
    made = requantize(src, "Q8_0", dst, pure=True)
    kinds = {t.name: t.tensor_type.name for t in gguf.GGUFReader(made).tensors}
    assert kinds["token_embd.weight"] == "Q8_0" and kinds["blk.0.ffn_up.weight"] == "Q8_0"
    stamp = made.stat().st_mtime_ns
    assert requantize(src, "Q8_0", dst, pure=True) == made and made.stat().st_mtime_ns == stamp
    assert not list(tmp_path.glob("*.partial-*"))


def test_an_unsupported_type_is_a_clear_error(tmp_path: Path) -> None:
    src = tmp_path / "tiny.gguf"
    _source(src)
    with pytest.raises(ConfigError, match=r"Q4_K.*choose one of Q4_0"):
        requantize(src, "Q4_K", tmp_path / "out.gguf")
