"""Turn the built-in Gemma 3 270M GGUF into the Hugging Face folder vLLM's CPU build serves.

vLLM 0.32 loads no GGUF, so transformers reads the GGUF (``gguf_file=``, weights dequantised) and saves
a plain folder: the GGUF quantiser marker dropped from the config, the tokenizer told to add ``<bos>``,
given the model's chat template and ``<end_of_turn>`` as a stop token. Run with the vLLM environment's
Python: ``python convert.py MODEL.gguf OUT_DIR``. Nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

#: Gemma 3's chat template, as its GGUF and its published tokenizer carry it (system text folded into
#: the first user turn, the model's turns as "model").
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)


def convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:  # transformers 5 keeps GGUF blocks packed unless told to unpack them into plain weights
        from transformers import GgufConfig

        unpack = {"quantization_config": GgufConfig(gguf_file=gguf.name, dequantize=True)}
    except ImportError:
        unpack = {}
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16, **unpack
    )
    model.hf_quantizer = None
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.eos_token_id = sorted({tok.convert_tokens_to_ids("<end_of_turn>"), tok.eos_token_id})
    tmp = out.with_name(out.name + ".partial")
    model.save_pretrained(tmp, safe_serialization=True)
    tok.add_bos_token = True
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(tmp)
    cfg = json.loads((tmp / "tokenizer_config.json").read_text())
    cfg.update(add_bos_token=True, chat_template=CHAT_TEMPLATE)
    (tmp / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
    gen = {"bos_token_id": tok.bos_token_id, "eos_token_id": config.eos_token_id}
    (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2))
    tmp.rename(out)


if __name__ == "__main__":
    convert(Path(sys.argv[1]), Path(sys.argv[2]))
