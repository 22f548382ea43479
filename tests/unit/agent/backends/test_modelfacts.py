"""GGUF facts come from the file's own metadata and tensors, never from its name."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from agent.backends.modelfacts import gguf_facts


def write_gguf(path: Path) -> None:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("Tiny Test")
    writer.add_size_label("12K")
    writer.add_context_length(512)
    writer.add_block_count(2)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_tensor("token_embd.weight", np.zeros((32, 256), dtype=np.float32))
    writer.add_tensor("output.weight", np.zeros((16, 256), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_facts_are_read_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "misleading-name-f16.gguf"
    write_gguf(path)
    facts = gguf_facts(path)
    assert facts == {
        "format": "gguf",
        "architecture": "llama",
        "name": "Tiny Test",
        "size_label": "12K",
        "parameters": 32 * 256 + 16 * 256,
        "quantization": "Q8_0",  # from general.file_type, whatever the file is called
        "context_length": 512,
        "layers": 2,
        "file_bytes": path.stat().st_size,
    }


def test_a_file_that_is_not_gguf_says_why_instead_of_failing(tmp_path: Path) -> None:
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"not a gguf file at all")
    assert gguf_facts(bad)["unavailable"]
    assert "FileNotFoundError" in gguf_facts(tmp_path / "missing.gguf")["unavailable"]
