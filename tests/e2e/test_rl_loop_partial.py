"""The RL loop with partial rollouts on (SPEC §8) on a tiny model, on CPU: it must still learn.

Same warm-up and task as tests/e2e/test_rl_loop.py, but each trajectory grows at most 24 tokens
per iteration (responses run to ~40), so most reasoning responses span two or three iterations
and older segments are trained with truncated importance weights.

The SFT warm-up is the session-wide `warmed_up_model` of conftest.py (~2-3 minutes on 2 cores,
run once for both modules).
"""

import json

import pytest
import torch

from longrl.cli import main

RL = ["iterations=12", "world.tasks=['add']", "world.min_level=2", "world.max_level=2",
      "rollout.prompts_per_iter=16", "rollout.samples_per_prompt=8", "rollout.max_new_tokens=48",
      "train.lr=5e-5", "train.mini_batch_size=32", "train.row_tokens=256", "eval.every=0",
      "eval.num_prompts=20", "eval.n_samples=1", "eval.max_new_tokens=48", "checkpoint_every=6",
      "partial.enabled=true", "partial.segment_tokens=24", "partial.max_age=3",
      "partial.segment_loss='importance'", "partial.importance_cap=1.0",
      "repetition.enabled=true", "repetition.penalty=0.5"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, warmed_up_model):
    out = tmp_path_factory.mktemp("partial")
    assert main(["train", f"out_dir={out}", "name=rl", f"model.path={warmed_up_model}", "--no-progress", *RL]) == 0
    return out / "rl"


def test_partial_rollouts_learn_and_continue_trajectories(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "rollout/continued" in r]
    assert len(rows) == 12
    assert all(r["rollout/budget_reserved"] <= r["rollout/budget"] == 16 * 8 * 24 for r in rows)
    assert sum(r["rollout/continued"] for r in rows) > 0  # trajectories were continued
    assert max(r["rollout/old_token_share"] for r in rows) > 0.1  # older policies' tokens trained
    trained = [r for r in rows if "reward/mean" in r and r["rollout/trajectories"] > 0]
    first = sum(r["reward/mean"] for r in trained[:3]) / 3
    last = sum(r["reward/mean"] for r in trained[-3:]) / 3
    assert last > first + 0.05, (first, last)
    # unfinished trajectories are part of the checkpoint
    state = torch.load(run / "checkpoints" / "6" / "trainer_state.pt", weights_only=False)
    assert "unfinished" in state["buffer"]
    assert all(t.finish_reason is None for t in state["buffer"]["unfinished"])
