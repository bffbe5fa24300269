"""The real-model preset end to end at a tiny scale: SmolLM2-135M-Instruct converted from the
bundled GGUF, two RL iterations of configs/smollm2_math.toml, the sync probe after each, and
weights that moved (docs/real_model.md)."""

import json
from pathlib import Path

import pytest
import torch

from longrl.cli import main

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
SOURCE = "reasoning_gym:chain_sum?size={n}&seed={seed}&min_terms=2&max_terms=2&min_digits=1&max_digits=1&system=none"

# The math reward alone may score every response of so few samples 0, and then every advantage is
# 0 and nothing trains; a small reward on length makes the rewards differ within a group.
LENGTH_REWARD = '''
def short(prompt, response):
    return 1.0 / (1 + len(response))
'''


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(next(path.glob("*.safetensors")))


def test_smollm2_preset_converts_trains_two_iterations_and_syncs(tmp_path):
    model = tmp_path / "smollm2"
    assert main(["models", "smollm2", "--out", str(model)]) == 0
    (tmp_path / "length.py").write_text(LENGTH_REWARD)
    assert main([
        "train", str(ROOT / "configs/smollm2_math.toml"), f"model.path={model}", f"out_dir={tmp_path}",
        "iterations=2", "checkpoint_every=0", "rollout.prompts_per_iter=2", "rollout.samples_per_prompt=4",
        "rollout.max_new_tokens=24", "eval.every=0", "eval.num_prompts=4", "eval.n_samples=2",
        "eval.max_new_tokens=24", f"data.train=['{SOURCE.format(n=16, seed=0)}']",
        f"data.eval=['{SOURCE.format(n=4, seed=100000)}']", f"reward.names=['math', '{tmp_path}/length.py:short']",
        "reward.weights=[1.0, 1.0]", "train.lr=1e-5", "--no-progress"]) == 0
    log = [json.loads(line) for line in (tmp_path / "smollm2_math" / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in log if "sync/probe_max_diff" in m]
    assert len(steps) == 2
    for m in steps:  # the engine generated with exactly the trainer's weights after each sync
        assert m["sync/probe_max_diff"] <= 1e-3
        assert m["reward/uniform_groups"] < 1.0  # some group had an advantage to train on
    assert any("eval/pass@1" in m for m in log)
    before, after = _tensors(model), _tensors(tmp_path / "smollm2_math" / "final")
    moved = [name for name in before if not torch.equal(before[name], after[name])]
    assert len(moved) > len(before) // 2, f"only {len(moved)} of {len(before)} tensors changed"
