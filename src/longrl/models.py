"""Loading policies and computing their token log-probs, shared by the trainer and the engines.

Log-probs are always taken under the temperature-scaled distribution `softmax(logits / T)`: the
engine records them that way at sampling time and the trainer recomputes them that way, so the
two sides of the OPMD log-ratio (SPEC §3) are the same quantity.

Shape legend: B rows, T tokens per row, V vocabulary.
"""

from __future__ import annotations

from pathlib import Path

import torch

from longrl.errors import ModelError
from longrl.types import Prompt

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_model_dir(path: str | Path) -> Path:
    """Raise a clear error unless `path` is a Hugging Face model directory."""
    path = Path(path)
    if not str(path):
        raise ModelError("no model given: set model.path to a Hugging Face model directory")
    if not path.is_dir():
        raise ModelError(f"model directory {str(path)!r} does not exist")
    if not (path / "config.json").is_file():
        raise ModelError(f"{str(path)!r} is not a Hugging Face model directory: no config.json")
    return path


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(check_model_dir(path))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: str | Path, dtype: str = "float32"):
    """The model of a directory: a causal LM, or a vision-language model (one whose config has a
    vision tower, e.g. Qwen2-VL) as its conditional-generation class (`longrl.vision`)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    from longrl.vision import is_vision_model

    path = check_model_dir(path)
    config = AutoConfig.from_pretrained(path)
    auto = AutoModelForImageTextToText if is_vision_model(config) else AutoModelForCausalLM
    return auto.from_pretrained(path, config=config, dtype=DTYPES[dtype])


def load_policy(path: str | Path, dtype: str = "float32"):
    """(model, tokenizer) of a model directory, checked to agree on the vocabulary."""
    tokenizer, model = load_tokenizer(path), load_model(path, dtype)
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise ModelError(f"{path}: the tokenizer has {len(tokenizer)} tokens but the model embeds only "
                         f"{rows}; the tokenizer does not belong to this model")
    return model, tokenizer


def encode_prompt(tokenizer, prompt: str | list[dict] | Prompt) -> list[int]:
    """Token ids of a prompt wrapped in the tokenizer's chat template, ready to answer.

    `prompt` is a user message, a chat (a list of `{role, content}`), or a `Prompt` (its
    `messages` when it has them, else its `text`). A tokenizer without a chat template gets the
    plain text: the message contents joined by blank lines.
    """
    if isinstance(prompt, Prompt):
        if prompt.images:
            raise ModelError(f"prompt {prompt.id!r} has images: encode it with longrl.vision.encode_vision_prompt "
                             "(a text tokenizer would drop them)")
        prompt = prompt.messages or prompt.text
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    if tokenizer.chat_template:
        encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)
    return tokenizer("\n\n".join(m["content"] for m in messages)).input_ids


def token_logprobs(model, input_ids: torch.Tensor, position_ids: torch.Tensor,
                   temperature: float = 1.0, chunk_tokens: int = 1024) -> torch.Tensor:
    """log p(input_ids[:, t] | input_ids[:, <t]) for every t, 0 at t = 0.

    Rows may hold several packed sequences: `position_ids` restart at 0 for each, and with no
    attention mask the model keeps attention inside each sequence.

    The LM head runs `chunk_tokens` tokens at a time (`longrl.logprobs`), so no [B, T, V] float32
    tensor is made in forward or backward. `chunk_tokens = 0`, or a model whose logits are not
    a plain linear head on its decoder, takes the plain path through the full logits.
    """
    from longrl.logprobs import policy_logprobs, supports_chunked, text_positions

    if chunk_tokens > 0 and supports_chunked(model):
        return policy_logprobs(model, input_ids, position_ids, temperature, chunk_tokens)[0]
    logits = model(input_ids=input_ids, position_ids=text_positions(model, position_ids), use_cache=False).logits
    logits = logits[:, :-1].float() / max(temperature, 1e-6)  # [B, T-1, V]
    targets = input_ids[:, 1:].unsqueeze(-1)  # [B, T-1, 1]
    picked = logits.gather(-1, targets).squeeze(-1) - logits.logsumexp(-1)  # [B, T-1]
    return torch.nn.functional.pad(picked, (1, 0))  # [B, T]
