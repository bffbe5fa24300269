"""SFT examples: the prompt is masked, the trace and end token are learned; the LR schedule."""

import pytest

from longrl.config import SFTConfig, WorldConfig
from longrl.data.worlds import World
from longrl.tiny import build_char_tokenizer
from longrl.models import encode_prompt
from longrl.sft import lr_at, sft_example


def test_example_masks_the_prompt_and_ends_with_eos():
    tok = build_char_tokenizer()
    prompt = World(WorldConfig(tasks=["add"], eval_size=1)).eval_prompts()[0]
    ids, mask = sft_example(tok, prompt)
    n_prompt = len(encode_prompt(tok, prompt.text))
    assert mask == [0.0] * n_prompt + [1.0] * (len(ids) - n_prompt)
    assert tok.decode(ids[n_prompt:-1]) == prompt.meta["trace"] and ids[-1] == tok.eos_token_id
    ids, mask = sft_example(tok, prompt, direct=True)
    assert tok.decode(ids[n_prompt:-1]) == f"A: {prompt.answer}"


def test_lr_schedule_by_hand():
    c = SFTConfig(steps=110, warmup_steps=10, lr=1.0)
    assert lr_at(0, c) == pytest.approx(0.1)  # (0 + 1) / 10
    assert lr_at(9, c) == pytest.approx(1.0)
    assert lr_at(10, c) == pytest.approx(1.0)  # cosine starts at the peak
    assert lr_at(60, c) == pytest.approx(0.1 + 0.9 * 0.5)  # half way down
    assert lr_at(110, c) == pytest.approx(0.1)  # floor: a tenth of the peak
