"""The long-context path end to end: 1,000+ token responses through rollout and training.

Not the learning itself (configs/long_rl.toml, docs/long_context.md): two RL iterations of a tiny
random model on the `rep` world, with responses held at 1,100 tokens, check that such sequences
are generated, packed into micro-batches under the token budget, scored by the chunked log-prob
path to the engine's own log-probs, and trained on with a finite loss.
"""

import json
import math

import torch

from longrl.cli import main
from longrl.config import TinyModelConfig
from longrl.tiny import build_char_tokenizer, build_tiny_model

RL = ["iterations=2", "world.tasks=['rep']", "world.min_level=64", "world.max_level=72",
      "world.train_size=50", "world.eval_size=2", "rollout.prompts_per_iter=2", "rollout.samples_per_prompt=2",
      "rollout.max_new_tokens=1100", "train.mini_batch_size=4", "train.row_tokens=1200",
      "train.logprob_chunk_tokens=256", "train.max_tokens_per_micro_batch=2400",
      "train.gradient_checkpointing=true", "eval.every=0", "eval.num_prompts=1", "eval.n_samples=1",
      "eval.max_new_tokens=16", "log_samples=1"]


def _never_ending_model(out):
    """A tiny random model that does not sample its end token: embeddings (tied to the LM head)
    scaled by 50 spread the other logits to a std of ~10, and the end token's row is zeroed, so
    its logit 0 sits far below the largest ones and every response runs to max_new_tokens."""
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(TinyModelConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128,
                                             max_positions=1200), tokenizer)
    with torch.no_grad():
        embeddings = model.get_input_embeddings().weight  # [V, d]
        embeddings.mul_(50.0)
        embeddings[tokenizer.eos_token_id] = 0.0
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_1100_token_responses_pass_through_rollout_and_training(tmp_path):
    model = _never_ending_model(tmp_path / "model")
    assert main(["train", f"out_dir={tmp_path}", "name=long", f"model.path={model}", "--no-progress", *RL]) == 0
    rows = [json.loads(line) for line in (tmp_path / "long" / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if "loss/opmd" in r]
    assert len(trained) == 2
    for r in trained:
        assert r["rollout/mean_tokens"] == r["rollout/max_tokens"] == 1100  # every response ran to the cap
        assert r["rollout/truncated"] == 1.0
        assert math.isfinite(r["loss/opmd"]) and math.isfinite(r["train/grad_norm"])
        # 4 sequences of ~1,115 tokens: one per 1,200-token row, two rows per 2,400-token micro-batch;
        # the trainer's chunked log-probs equal the engine's KV-cache ones at every position
        assert r["train/old_logprob_max_diff"] < 1e-3
    sample = json.loads((tmp_path / "long" / "samples" / "iter_000001.jsonl").read_text().splitlines()[0])
    assert sample["prompt"].count("+") == 1 and "*" in sample["prompt"]
