"""LoRA: adapters train only themselves, merged weights equal the adapted model, and the engine
holds the merge after every sync (the probe check passes unchanged)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from longrl.cli import main
from longrl.config import ConfigError, LossConfig, ModelConfig, RolloutConfig, RunConfig, TrainConfig, load_config
from longrl.lora import apply_lora, merged_state_dict
from longrl.models import load_model, load_policy, token_logprobs
from longrl.rollout.engine import make_engine
from longrl.trainer import Trainer
from longrl.weight_sync import WeightSync

TARGETS = ModelConfig().lora_target_modules


def _ids():
    ids = torch.tensor([[3, 20, 21, 22, 23, 5, 24, 25]])
    return ids, torch.arange(ids.shape[1])[None]


def test_merged_weights_give_the_adapted_models_log_probs(tiny_model_dir):
    adapted = apply_lora(load_model(tiny_model_dir), rank=4, alpha=8.0, dropout=0.0, targets=TARGETS)
    with torch.no_grad():  # adapters away from their zero start
        for name, p in adapted.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    plain = load_model(tiny_model_dir)
    merged = merged_state_dict({n: t.detach() for n, t in adapted.state_dict().items()}, 8.0 / 4)
    assert set(merged) == set(plain.state_dict())  # the plain model's names, nothing more
    plain.load_state_dict(merged)
    ids, positions = _ids()
    with torch.no_grad():
        want = token_logprobs(adapted.eval(), ids, positions)
        got = token_logprobs(plain.eval(), ids, positions)
    assert (got - want).abs().max().item() < 1e-5
    assert (got - token_logprobs(load_model(tiny_model_dir).eval(), ids, positions)).abs().max() > 1e-3


def test_lora_trains_only_the_adapters_and_the_sync_check_passes(tiny_model_dir):
    model, tokenizer = load_policy(tiny_model_dir)
    engine = make_engine(RolloutConfig(), model, tokenizer)
    model = apply_lora(model, rank=4, alpha=16.0, dropout=0.0, targets=TARGETS)
    trainer = Trainer(model, TrainConfig(lr=1e-2, mini_batch_size=4), LossConfig(), tokenizer.pad_token_id)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 0 < trainable < 0.5 * sum(p.numel() for p in frozen.values())
    from tests.unit.test_trainer import _trajectories

    trainer.train_iteration(_trajectories())
    assert all(torch.equal(frozen[n], p) for n, p in model.named_parameters() if n in frozen)
    sync = WeightSync(model, engine, tokenizer, tolerance=1e-4)
    before = sync.probe_max_diff()  # the engine still holds the start model
    metrics = sync(1)
    assert before > 1e-3 and metrics["sync/probe_max_diff"] < 1e-4


def test_a_resumed_lora_run_ends_where_the_uninterrupted_one_does(tmp_path, tiny_model_dir):
    """The checkpoint's sharded state holds the adapters and the unmerged base weights, so the
    resume continues the same adapters, not fresh ones on the merged model."""
    import shutil

    args = [f"out_dir={tmp_path}", f"model.path={tiny_model_dir}", "--no-progress", "iterations=4",
            "checkpoint_every=2", "checkpoint_keep=0", "model.lora_rank=4", "world.tasks=['add']",
            "world.min_level=1", "world.max_level=1", "rollout.prompts_per_iter=4", "rollout.samples_per_prompt=2",
            "rollout.max_new_tokens=8", "train.lr=1e-2", "train.mini_batch_size=4", "train.row_tokens=64",
            "eval.every=0", "eval.num_prompts=2", "eval.n_samples=1", "eval.max_new_tokens=8"]
    assert main(["train", "name=whole", *args]) == 0
    shutil.copytree(tmp_path / "whole", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "4")
    shutil.rmtree(tmp_path / "resumed" / "final")
    assert main(["train", "--resume", str(tmp_path / "resumed"), "--no-progress"]) == 0
    whole, resumed = (load_file(tmp_path / n / "final" / "model.safetensors") for n in ("whole", "resumed"))
    start = load_file(tiny_model_dir / "model.safetensors")
    assert any(not torch.equal(start[k], whole[k]) for k in start)  # the run trained
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_lora_run_end_to_end_writes_a_plain_model(tmp_path, tiny_model_dir):
    args = ["train", f"out_dir={tmp_path}", "name=lora", f"model.path={tiny_model_dir}", "--no-progress",
            "iterations=2", "model.lora_rank=4", "world.tasks=['add']", "world.min_level=1", "world.max_level=1",
            "rollout.prompts_per_iter=2", "rollout.samples_per_prompt=2", "rollout.max_new_tokens=8",
            "train.lr=1e-2", "train.mini_batch_size=4", "train.row_tokens=64", "eval.every=0",
            "eval.num_prompts=2", "eval.n_samples=1", "eval.max_new_tokens=8"]
    assert main(args) == 0
    rows = [json.loads(line) for line in (tmp_path / "lora" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["sync/probe_max_diff"] < 1e-3 for r in rows if "sync/probe_max_diff" in r)
    final = load_file(tmp_path / "lora" / "final" / "model.safetensors")
    start = load_file(tiny_model_dir / "model.safetensors")
    assert set(final) == set(start)  # a plain model directory: no adapter tensors
    changed = {k for k in start if not torch.equal(start[k], final[k])}
    assert changed and all(any(t in k for t in TARGETS) for k in changed)  # only adapted layers moved


def test_lora_settings_are_checked():
    with pytest.raises(ConfigError, match="lora_rank"):
        ModelConfig(lora_rank=-1)
    assert load_config(RunConfig, None, ["model.lora_rank=8", "cluster.enabled=true"]).model.lora_rank == 8
