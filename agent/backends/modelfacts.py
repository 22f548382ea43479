"""What a model file says about itself: GGUF metadata for the manifest (family, size, quantisation).

A study compares variants by what they are, so every run records it from the file, not from its name:
architecture and name, parameter count (from the tensors), quantisation (the file type), context length,
layers and file size. Reading maps the file and walks only its header, skipping every value it does not
keep (a 262k-token vocabulary costs a skip per token, not a parse): a fraction of a second where the
``gguf`` package's full reader takes tens of seconds; a test holds the two equal.
"""

from __future__ import annotations

import functools
import math
import mmap
import struct
from pathlib import Path
from typing import Any

__all__ = ["gguf_facts"]


#: GGUF value types: struct format of each fixed-size one; 8 is a string, 9 an array.
_FIXED = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
#: The metadata a manifest keeps; every other value (the tokenizer's vocabulary) is skipped unread.
_WANTED = (
    "general.architecture",
    "general.file_type",
    "general.name",
    "general.size_label",
    "infermeter.requantized_from",
)
_PER_ARCH = ("context_length", "block_count")


class _Header:
    """A cursor over a GGUF file's header (versions 2 and 3, either byte order)."""

    def __init__(self, data: Any) -> None:
        self.data, self.pos, self.order = data, 4, "<"
        if bytes(data[:4]) != b"GGUF":
            raise ValueError("not a GGUF file (no GGUF magic)")
        version = self.take("I")
        if version > 0xFFFF:  # written big-endian
            self.pos, self.order = 4, ">"
            version = self.take("I")
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} is not supported")

    def take(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(self.order + fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def skip(self, n: int) -> None:
        """Move past ``n`` bytes (read the length first: ``pos += take()`` would lose the length's own)."""
        self.pos += n

    def text(self) -> str:
        n = self.take("Q")
        start, self.pos = self.pos, self.pos + n
        return bytes(self.data[start : self.pos]).decode("utf-8", errors="replace")

    def value(self, kind: int, keep: bool) -> Any:
        """One value of ``kind``; an array (or a string not kept) is skipped and read as None."""
        if kind in _FIXED:
            return self.take(_FIXED[kind])
        if kind == _STRING:
            if keep:
                return self.text()
            self.skip(self.take("Q"))
            return None
        if kind != _ARRAY:
            raise ValueError(f"unknown GGUF value type {kind}")
        item, count = self.take("I"), self.take("Q")
        if item in _FIXED:
            self.skip(struct.calcsize(_FIXED[item]) * count)
        else:
            for _ in range(count):
                self.value(item, keep=False)
        return None


def _header(data: Any) -> tuple[dict[str, object], int]:
    """The wanted metadata and the total count of tensor elements."""
    h = _Header(data)
    tensors, kvs = h.take("Q"), h.take("Q")
    meta: dict[str, object] = {}
    for _ in range(kvs):
        key = h.text()
        kind = h.take("I")
        keep = key in _WANTED or key.rsplit(".", 1)[-1] in _PER_ARCH
        value = h.value(kind, keep)
        if keep:
            meta[key] = value
    elements = 0
    for _ in range(tensors):
        h.skip(h.take("Q"))  # name
        dims = [h.take("Q") for _ in range(h.take("I"))]
        h.take("I")  # type
        h.take("Q")  # offset
        elements += math.prod(dims)
    return meta, elements


@functools.lru_cache(maxsize=16)
def _read(path: str, size: int, mtime: float) -> dict[str, object]:
    import gguf  # the file types' names

    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
        meta, parameters = _header(data)
    arch = meta.get("general.architecture")
    file_type = meta.get("general.file_type")
    try:
        quant = (
            gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_") if isinstance(file_type, int) else None
        )
    except ValueError:
        quant = f"file type {file_type}"
    source = meta.get("infermeter.requantized_from")
    return {
        "format": "gguf",
        "architecture": arch,
        "name": meta.get("general.name"),
        "size_label": meta.get("general.size_label"),
        "parameters": parameters,
        "quantization": quant,
        "context_length": meta.get(f"{arch}.context_length") if arch else None,
        "layers": meta.get(f"{arch}.block_count") if arch else None,
        "file_bytes": size,
        **({"requantized_from": source} if source else {}),
    }


def gguf_facts(path: Path) -> dict[str, object]:
    """The GGUF file's facts, or why there are none (never raises: a manifest must still be written)."""
    try:
        stat = path.stat()
        return dict(_read(str(path), stat.st_size, stat.st_mtime))
    except ImportError:
        return {"format": "gguf", "unavailable": "the gguf package is not installed"}
    except (OSError, ValueError, KeyError, IndexError, struct.error) as e:
        return {"format": "gguf", "unavailable": f"{e.__class__.__name__}: {e}"}
