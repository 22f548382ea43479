"""What a model file says about itself: GGUF metadata for the manifest (family, size, quantisation).

A study compares variants by what they are, so every run records it from the file, not from its name:
architecture and name, parameter count (from the tensors), quantisation (the file type), context length,
layers and file size. Reading maps the file and touches only its header.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

__all__ = ["gguf_facts"]


def _scalar(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    if field is None:
        return None
    try:
        return field.contents()
    except (ValueError, IndexError, TypeError):
        return None


@functools.lru_cache(maxsize=16)
def _read(path: str, size: int, mtime: float) -> dict[str, Any]:
    import gguf

    reader = gguf.GGUFReader(path)
    arch = _scalar(reader, "general.architecture")
    file_type = _scalar(reader, "general.file_type")
    try:
        quant = (
            gguf.LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_") if file_type is not None else None
        )
    except ValueError:
        quant = f"file type {file_type}"
    source = _scalar(reader, "infermeter.requantized_from")
    return {
        "format": "gguf",
        "architecture": arch,
        "name": _scalar(reader, "general.name"),
        "size_label": _scalar(reader, "general.size_label"),
        "parameters": sum(int(t.n_elements) for t in reader.tensors),
        "quantization": quant,
        "context_length": _scalar(reader, f"{arch}.context_length") if arch else None,
        "layers": _scalar(reader, f"{arch}.block_count") if arch else None,
        "file_bytes": size,
        **({"requantized_from": source} if source else {}),
    }


def gguf_facts(path: Path) -> dict[str, Any]:
    """The GGUF file's facts, or why there are none (never raises: a manifest must still be written)."""
    try:
        stat = path.stat()
        return dict(_read(str(path), stat.st_size, stat.st_mtime))
    except ImportError:
        return {"format": "gguf", "unavailable": "the gguf package is not installed"}
    except (OSError, ValueError, KeyError, IndexError) as e:
        return {"format": "gguf", "unavailable": f"{e.__class__.__name__}: {e}"}
