"""GGUF facts come from the file's own metadata and tensors, never from its name."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

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


def library_facts(path: Path) -> dict[str, object]:
    """The same facts through the gguf package's full reader: the reference the fast header walk matches."""
    reader = gguf.GGUFReader(str(path))

    def scalar(key: str) -> object:
        field = reader.fields.get(key)
        return None if field is None else field.contents()

    arch = scalar("general.architecture")
    file_type = scalar("general.file_type")
    return {
        "format": "gguf",
        "architecture": arch,
        "name": scalar("general.name"),
        "size_label": scalar("general.size_label"),
        "parameters": sum(int(t.n_elements) for t in reader.tensors),
        "quantization": None
        if file_type is None
        else gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_"),
        "context_length": scalar(f"{arch}.context_length"),
        "layers": scalar(f"{arch}.block_count"),
        "file_bytes": path.stat().st_size,
    }


@pytest.mark.parametrize("endian", [gguf.GGUFEndian.LITTLE, gguf.GGUFEndian.BIG])
def test_the_header_walk_equals_the_gguf_packages_reader(tmp_path: Path, endian: gguf.GGUFEndian) -> None:
    """Arrays of strings, of numbers and of arrays, and every scalar type, before the fields we keep."""
    path = tmp_path / "m.gguf"
    writer = gguf.GGUFWriter(str(path), "gemma3", endianess=endian)
    writer.add_array("tokenizer.ggml.tokens", [f"tok{i}" * (i % 5) for i in range(3000)])
    writer.add_array("tokenizer.ggml.scores", [float(i) for i in range(500)])
    writer.add_array("nested", [[1, 2], [3]])
    writer.add_uint8("u8", 7)
    writer.add_int16("i16", -3)
    writer.add_float64("f64", 2.5)
    writer.add_bool("flag", True)
    writer.add_uint64("u64", 1 << 40)
    writer.add_name("Gémma ünïcode")
    writer.add_context_length(32768)
    writer.add_block_count(18)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    writer.add_tensor("a", np.zeros((3, 5, 7), dtype=np.float32))
    writer.add_tensor("b", np.zeros((11,), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert gguf_facts(path) == library_facts(path)
    assert gguf_facts(path)["parameters"] == 3 * 5 * 7 + 11


@pytest.mark.slow
def test_the_built_in_model_reads_as_the_library_reads_it(tmp_path: Path) -> None:
    """The real 253 MB file with its 262k-token vocabulary (the library takes tens of seconds here)."""
    from agent.backends.builtin_model import ensure_builtin_model

    path = ensure_builtin_model(tmp_path)
    assert gguf_facts(path) == library_facts(path)
