"""Re-quantise a GGUF file to a lower (or plainer) tier, with the ``gguf`` package's reference quantisers.

A quantisation study needs more than one tier of the same weights. llama.cpp's own ``llama-quantize`` is
not part of the Python engine package, but the ``gguf`` package (llama.cpp's Python side) carries numpy
implementations of the legacy block formats: Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0. This module reads a GGUF,
de-quantises each 2-D weight matrix of the transformer blocks to float32 and quantises it again to the
target type; norms and other 1-D tensors stay float32, and the token embedding (which Gemma ties to the
output layer) keeps its type, as llama.cpp's quantiser keeps the output tensor at a higher precision
unless told otherwise (``pure=True`` quantises it too). Every metadata key is copied; ``general.file_type``
names the new tier and ``infermeter.requantized_from`` the source file and its type.

Starting from an already quantised file is a *re*-quantisation: the new tier carries the source's error
plus its own. Reports say so.

The result is cached (in the model cache) under a name that holds the target type and the source's size
and modification time, so a study makes it once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, get_args

import structlog

from agent.core.errors import ConfigError

__all__ = ["REQUANT_TYPES", "RequantType", "requantize", "requantized_path"]

logger = structlog.get_logger(__name__)

#: Target types the gguf package can quantise to, and the file type each one names.
RequantType = Literal["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]
REQUANT_TYPES: tuple[str, ...] = get_args(RequantType)

#: Tensors that keep their type unless ``pure``: the (tied) embedding / output layer.
_KEPT = ("token_embd.weight", "output.weight")


def requantized_path(src: Path, qtype: str, folder: Path, pure: bool = False) -> Path:
    """Where the ``qtype`` copy of ``src`` is cached in ``folder``: named after the source's size, mtime."""
    stat = src.stat()
    tag = f"{stat.st_size:x}-{int(stat.st_mtime):x}"
    return folder / f"{src.stem}.requant-{qtype.upper()}{'-pure' if pure else ''}-{tag}.gguf"


def _target_type(qtype: str) -> Any:
    import gguf

    name = qtype.upper()
    if name not in REQUANT_TYPES:
        raise ConfigError(f"cannot re-quantise to {qtype!r}; choose one of {', '.join(REQUANT_TYPES)}")
    return gguf.GGMLQuantizationType[name], gguf.LlamaFileType[f"MOSTLY_{name}"]


def _converts(tensor: Any, pure: bool) -> bool:
    """A 2-D weight whose rows split into whole blocks, and not a kept tensor."""
    if len(tensor.shape) != 2 or (tensor.name in _KEPT and not pure):
        return False
    return int(tensor.shape[0]) % 32 == 0


def _copy_metadata(reader: Any, writer: Any, file_type: int, note: str) -> None:
    import gguf

    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        if field.name == gguf.Keys.General.FILE_TYPE:
            continue
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), value_type, sub_type=sub_type)
    writer.add_file_type(file_type)
    writer.add_string("infermeter.requantized_from", note)


def requantize(src: Path, qtype: str, dst: Path, *, pure: bool = False) -> Path:
    """Write ``src`` re-quantised to ``qtype`` at ``dst``; an existing ``dst`` is returned as it is."""
    import gguf
    import numpy as np

    target, file_type = _target_type(qtype)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_file() and dst.stat().st_size > 0:
        return dst
    reader = gguf.GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    source_type = reader.fields.get(gguf.Keys.General.FILE_TYPE)
    source_name = gguf.LlamaFileType(int(source_type.contents())).name if source_type else "unknown"
    partial = dst.with_name(dst.name + f".partial-{os.getpid()}")
    writer = gguf.GGUFWriter(partial, arch)
    _copy_metadata(reader, writer, int(file_type), f"{src.name} ({source_name.removeprefix('MOSTLY_')})")
    converted = 0
    for tensor in reader.tensors:
        if _converts(tensor, pure):
            values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
            writer.add_tensor(tensor.name, gguf.quants.quantize(values, target), raw_dtype=target)
            converted += 1
        else:
            writer.add_tensor(
                tensor.name, tensor.data, raw_shape=tensor.data.shape, raw_dtype=tensor.tensor_type
            )
    logger.info("re-quantising", source=str(src), to=target.name, tensors=converted)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.replace(dst)
    return dst
