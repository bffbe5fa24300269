"""The tiny models longrl trains on a CPU: a character-level tokenizer and a small random Qwen2.

The tokenizer is built with Hugging Face `tokenizers` and saved as a normal tokenizer directory
with a chat template; the model is a random-init Qwen2 saved as a Hugging Face model directory,
so every other part of longrl loads them like any pretrained model.
"""

from __future__ import annotations

from pathlib import Path

from longrl.config import TinyModelConfig

SPECIAL_TOKENS = ["<|pad|>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_char_tokenizer():
    """A character-level tokenizer: byte-level BPE with the 256 byte symbols and no merges.

    Byte-level BPE is the scheme of Qwen2's own tokenizer, so `AutoTokenizer` (which loads a
    Qwen2 model directory's tokenizer as `Qwen2Tokenizer`, whatever class saved it) and any other
    tool rebuild exactly this tokenizer; with no merges every ASCII character is one token.
    `<|endoftext|>` is in the vocabulary because `Qwen2Tokenizer` uses it as its unknown token.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + alphabet)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.normalizer = normalizers.NFC()
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(SPECIAL_TOKENS)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<|pad|>", unk_token="<|endoftext|>", eos_token="<|end|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(config: TinyModelConfig, tokenizer, seed: int = 0):
    """A random-init causal LM of `config`'s shape for `tokenizer`'s vocabulary."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    model_config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads, intermediate_size=config.intermediate_size,
        max_position_embeddings=config.max_positions, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(model_config)


def save_tiny_model(config: TinyModelConfig, out_dir: str | Path, seed: int = 0) -> Path:
    """Build the tokenizer and a tiny random model and save both as one HF model directory."""
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(config, tokenizer, seed)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
