"""The whole k1.5 loop on a tiny model, on CPU: SFT warm-up, then RL that must learn.

One SFT run (`warmed_up_model` in conftest.py) and one RL run are shared by the tests, driven
through the CLI as a user would. The warm-up mixes answer-only and step-by-step traces; the tiny
model cannot add in one step, so RL has a real signal to find: reasoning first earns reward.
"""

import json

import pytest
import torch
from safetensors.torch import load_file

from longrl.cli import main

RL = ["iterations=12", "world.tasks=['add']", "world.min_level=2", "world.max_level=2",
      "rollout.prompts_per_iter=16", "rollout.samples_per_prompt=8", "rollout.max_new_tokens=48",
      "train.lr=5e-5", "train.mini_batch_size=32", "train.row_tokens=256", "eval.every=0",
      "eval.num_prompts=50", "eval.n_samples=2", "eval.max_new_tokens=48", "checkpoint_every=6"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, warmed_up_model):
    out = tmp_path_factory.mktemp("runs")
    assert main(["train", f"out_dir={out}", "name=rl", f"model.path={warmed_up_model}", "--no-progress", *RL]) == 0
    return out


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_rl_raises_mean_reward_and_changes_parameters(runs, warmed_up_model):
    rows = [r for r in _metrics(runs / "rl") if "reward/mean" in r]
    assert len(rows) == 12
    first = sum(r["reward/mean"] for r in rows[:3]) / 3
    last = sum(r["reward/mean"] for r in rows[-3:]) / 3
    assert last > first + 0.05, (first, last)
    before = load_file(warmed_up_model / "model.safetensors")
    after = load_file(runs / "rl" / "final" / "model.safetensors")
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_run_directory_holds_what_a_run_promises(runs):
    run = runs / "rl"
    rows = _metrics(run)
    assert rows[0]["iteration"] == 0 and "eval/pass@1" in rows[0]  # the start model, before RL
    assert "eval/pass@1" in rows[-1] and rows[-1]["iteration"] == 12
    for key in ("reward/mean", "rollout/mean_tokens", "perf/rollout_tokens_per_s",
                "perf/train_tokens_per_s", "loss/opmd", "train/old_logprob_max_diff"):
        assert key in rows[1], key
    assert rows[1]["train/old_logprob_max_diff"] < 1e-3  # engine and trainer agree on π_θi
    assert (run / "config.toml").is_file()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    sample = json.loads((run / "samples" / "iter_000001.jsonl").read_text().splitlines()[0])
    assert {"prompt", "response", "reward", "finish_reason", "policy_versions"} <= sample.keys()
    assert (run / "checkpoints" / "6" / "trainer_state.pt").is_file()
    assert (run / "final" / "config.json").is_file() and (run / "final" / "tokenizer.json").is_file()


def test_resume_continues_exactly(runs):
    # Resume from checkpoint 6 into a copy of the run: iterations 7..12 must repeat exactly.
    import shutil

    copy = runs / "rl_resumed"
    shutil.copytree(runs / "rl", copy)
    shutil.rmtree(copy / "checkpoints" / "12")
    assert main(["train", "--resume", str(copy), "--no-progress"]) == 0
    original = {r["iteration"]: r for r in _metrics(runs / "rl")}
    resumed = {r["iteration"]: r for r in _metrics(copy)}
    assert sorted(resumed) == sorted(original)
    for i in range(7, 13):
        assert resumed[i]["reward/mean"] == original[i]["reward/mean"], i
        assert resumed[i]["rollout/mean_tokens"] == original[i]["rollout/mean_tokens"], i


def test_eval_command(runs, capsys):
    assert main(["eval", "--model", str(runs / "rl" / "final"), "world.tasks=['add']", "world.min_level=2",
                 "world.max_level=2", "eval.num_prompts=20", "eval.n_samples=4", "eval.pass_k=[1,4]",
                 "eval.max_new_tokens=48"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert 0.0 <= metrics["eval/pass@1"] <= metrics["eval/pass@4"] <= 1.0
    assert metrics["eval/prompts"] == 20 and metrics["eval/mean_tokens"] > 0
