"""Unbiased pass@k and the evaluation metrics."""

import pytest

from longrl.config import EvalConfig, WorldConfig
from longrl.data.worlds import World
from longrl.evaluate import evaluate, pass_at_k
from longrl.rewards.registry import get_reward
from longrl.types import Completion


@pytest.mark.parametrize("n, c, k, expected", [
    (4, 1, 1, 0.25),
    (4, 1, 2, 1 - 3 / 6),  # 1 - C(3,2)/C(4,2)
    (8, 2, 4, 1 - 15 / 70),  # 1 - C(6,4)/C(8,4)
    (5, 0, 3, 0.0),
    (5, 3, 3, 1.0),  # fewer than k wrong samples: always some correct
])
def test_pass_at_k_by_hand(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_needs_enough_samples():
    with pytest.raises(ValueError, match="at least 4 samples"):
        pass_at_k(2, 1, 4)


class ScriptedEngine:
    """Answers each prompt with its reference trace on even samples and garbage on odd ones."""

    def __init__(self, tokenizer, prompts):
        self.tokenizer, self.traces = tokenizer, [p.meta["trace"] for p in prompts]

    def generate(self, requests, params):
        out = []
        for i, _ in enumerate(requests):
            text = self.traces[i // 4] if i % 2 == 0 else "A: -1"
            ids = self.tokenizer(text, add_special_tokens=False).input_ids + [self.tokenizer.eos_token_id]
            out.append(Completion(ids, [0.0] * len(ids), "stop"))
        return out


def test_evaluate_counts_correct_samples():
    from longrl.tiny import build_char_tokenizer

    tok = build_char_tokenizer()
    prompts = World(WorldConfig(tasks=["add"], eval_size=5)).eval_prompts()
    metrics = evaluate(ScriptedEngine(tok, prompts), tok, prompts, {"world": (get_reward("world"), 1.0)},
                       EvalConfig(num_prompts=5, n_samples=4, pass_k=[1, 2]))
    assert metrics["eval/pass@1"] == 0.5
    assert metrics["eval/pass@2"] == pytest.approx(1 - 1 / 6)  # 2 of 4 correct: 1 - C(2,2)/C(4,2)
    assert metrics["eval/prompts"] == 5
