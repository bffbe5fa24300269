"""The whole chain on the visual tiny world (docs/vision.md), on CPU, through the CLI: SFT of a
tiny Qwen2-VL built from `tiny.vision`, four RL iterations with partial rollouts (continued
trajectories keep their images), `longrl eval` on the final directory, and a resume from a
checkpoint that must repeat the run's last iteration exactly. Sized to run in well under a minute
at one thread; it checks that every stage runs and agrees with the others, not that RL learns
(configs/vision_rl.toml is the measured run)."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from longrl.cli import main
from longrl.models import load_policy
from longrl.vision import is_vision_model, load_processor

# counting squares: the image task a tiny model learns within seconds, so RL's groups hold both
# rewards and the steps move the policy; `longrl eval` then runs all three image tasks
WORLD = ["world.tasks=['count_img']", "world.min_level=1", "world.max_level=2", "world.train_size=200",
         "world.eval_size=12"]
ALL_TASKS = ["world.tasks=['add_img','count_img','text_img']", "world.min_level=1", "world.max_level=2",
             "world.eval_size=12"]
SFT = ["tiny.vision=true", "tiny.hidden_size=64", "tiny.num_layers=2", "tiny.num_heads=4",
       "tiny.intermediate_size=128", "tiny.vision_dim=32", "steps=40", "lr=5e-3", "warmup_steps=5",
       "rows_per_step=16", "row_tokens=256", "log_every=1", "world.direct_fraction=0.5",
       "eval.num_prompts=12", "eval.n_samples=1", "eval.max_new_tokens=32", *WORLD]
RL = ["iterations=4", "rollout.prompts_per_iter=4", "rollout.samples_per_prompt=4", "rollout.max_new_tokens=32",
      "partial.enabled=true", "partial.segment_tokens=8", "partial.max_age=4", "partial.segment_loss='importance'",
      "train.lr=1e-4", "train.mini_batch_size=16", "train.row_tokens=256", "eval.every=0", "eval.num_prompts=12",
      "eval.n_samples=1", "eval.max_new_tokens=32", "checkpoint_every=1", "log_samples=2", *WORLD]


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("vision")
    assert main(["sft", f"out_dir={out}", "name=sft", "--no-progress", *SFT]) == 0
    assert main(["train", f"out_dir={out}", "name=rl", f"model.path={out / 'sft' / 'final'}", "--no-progress",
                 *RL]) == 0
    return out


def test_sft_trains_the_tiny_vlm_and_saves_model_and_processor(runs):
    rows = _rows(runs / "sft" / "metrics.jsonl")
    first, last = rows[0]["sft/loss"], sum(r["sft/loss"] for r in rows[-5:]) / 5
    assert first > 4.0 and last < 0.6 * first, (first, last)  # from ~log(266) down
    final = runs / "sft" / "final"
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json"):
        assert (final / name).is_file(), name
    model, tok = load_policy(final)
    assert is_vision_model(model) and load_processor(final).tokenizer.get_vocab() == tok.get_vocab()
    metrics = json.loads((runs / "sft" / "eval.json").read_text())
    assert metrics["eval/prompts"] == 12 and metrics["eval/mean_tokens"] > 0


def test_rl_iterations_with_partial_rollouts_on_images(runs):
    rows = _rows(runs / "rl" / "metrics.jsonl")
    assert [r["iteration"] for r in rows] == [0, 1, 2, 3, 4]
    assert "eval/pass@1" in rows[0] and "eval/pass@1" in rows[-1]
    assert sum(r["rollout/continued"] for r in rows[1:]) > 0  # trajectories continued with their images
    for r in rows[1:]:
        assert r["rollout/budget_reserved"] <= r["rollout/budget"] == 4 * 4 * 8
        assert r["sync/probe_max_diff"] < 1e-3  # the probe holds an image
    trained = [r for r in rows[1:] if "loss/opmd" in r]
    assert trained and all(r["train/steps"] >= 1 for r in trained)
    assert max(r["train/old_token_share"] for r in trained) > 0  # older segments trained, importance-weighted
    for r in trained:  # engine and trainer agree on the image rows' log-probs under π_θi
        assert r["train/old_logprob_max_diff"] < 1e-3
    sample = _rows(runs / "rl" / "samples" / "iter_000001.jsonl")[0]
    assert sample["prompt"] == "How many more red squares than blue squares?"
    final = runs / "rl" / "final"
    assert (final / "preprocessor_config.json").is_file() and (runs / "rl" / "checkpoints" / "3" /
                                                               "preprocessor_config.json").is_file()
    before, after = load_file(runs / "sft" / "final" / "model.safetensors"), load_file(final / "model.safetensors")
    assert before.keys() == after.keys()
    assert not torch.equal(before["visual.patch_embed.proj.weight"], after["visual.patch_embed.proj.weight"])


def test_eval_command_on_the_final_directory(runs, capsys):
    capsys.readouterr()
    assert main(["eval", "--model", str(runs / "rl" / "final"), *ALL_TASKS, "eval.num_prompts=12", "eval.n_samples=2",
                 "eval.pass_k=[1,2]", "eval.max_new_tokens=32"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["eval/prompts"] == 12 and metrics["eval/samples_per_prompt"] == 2
    assert 0.0 <= metrics["eval/pass@1"] <= metrics["eval/pass@2"] <= 1.0 and metrics["eval/mean_tokens"] > 0


def test_resume_from_a_checkpoint_repeats_the_last_iteration(runs):
    copy = runs / "rl_resumed"
    shutil.copytree(runs / "rl", copy)
    shutil.rmtree(copy / "checkpoints" / "4")
    assert main(["train", "--resume", str(copy), "--no-progress"]) == 0
    original, resumed = _rows(runs / "rl" / "metrics.jsonl"), _rows(copy / "metrics.jsonl")
    assert [r["iteration"] for r in resumed] == [0, 1, 2, 3, 4]
    for key in ("reward/mean", "rollout/mean_tokens", "rollout/continued", "loss/opmd", "eval/pass@1"):
        assert resumed[4][key] == original[4][key], key


def test_vision_modes_benchmark_splits_each_task_by_how_it_answers(runs, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "vision_modes.py"
    spec = importlib.util.spec_from_file_location("vision_modes", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main(["--model", str(runs / "sft" / "final"), "--prompts", "12", "--samples", "2",
                           f"out_dir={runs}", *ALL_TASKS, "eval.max_new_tokens=32"])
    tasks = {task for task, _ in results}
    assert tasks <= {"add_img", "count_img", "text_img"} and tasks
    assert sum(results[task, "all"][0] for task in tasks) == 24  # 12 prompts x 2 responses
    for task in tasks:
        n, rate = results[task, "all"]
        parts = [results[key] for key in ((task, "direct"), (task, "reasoned")) if key in results]
        assert sum(p[0] for p in parts) == n
        assert rate == pytest.approx(sum(p[0] * p[1] for p in parts) / n)
    assert "pass@1" in capsys.readouterr().out
