"""The RL loop on a local Ray instance must learn the tiny world like the one-process loop.

`longrl train ... cluster.enabled=true` with 2 trainer ranks (FSDP2 over gloo; 1 where this
install has no `longrl.distributed`), 2 rollout workers and 1 reward worker, from the SFT warm-up
(`warmed_up_model`). One Ray instance serves the module; the command finds it and does not shut
it down.
"""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from longrl.cli import main  # noqa: E402

try:
    import longrl.distributed  # noqa: F401

    RANKS = 2
except ImportError:  # the FSDP2 trainer is not in this install: one rank
    RANKS = 1

RL = ["iterations=40", "world.tasks=['add']", "world.min_level=2", "world.max_level=2",
      "rollout.prompts_per_iter=16", "rollout.samples_per_prompt=8", "rollout.max_new_tokens=48",
      "train.lr=5e-5", "train.mini_batch_size=32", "train.row_tokens=256", "eval.every=0",
      "eval.num_prompts=200", "eval.n_samples=4", "eval.max_new_tokens=48", "checkpoint_every=20"]
DEFAULT = str(Path(__file__).parents[2] / "configs" / "default.toml")
CLUSTER = ["cluster.enabled=true", f"cluster.trainer_ranks={RANKS}", "cluster.rollout_workers=2",
           "cluster.reward_workers=1", "threads=1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, warmed_up_model):
    ray.init(num_cpus=4, include_dashboard=False)
    out = tmp_path_factory.mktemp("cluster_runs")
    assert main(["train", DEFAULT, f"out_dir={out}", "name=rl",
                 f"model.path={warmed_up_model}", "--no-progress", *RL, *CLUSTER]) == 0
    yield out
    ray.shutdown()


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_cluster_run_learns_the_tiny_world(runs):
    rows = _metrics(runs / "rl")
    start, end = rows[0]["eval/pass@1"], rows[-1]["eval/pass@1"]
    assert end >= start + 0.20, (start, end)  # held-out pass@1 up by at least 20 points
    trained = [r for r in rows if "reward/mean" in r]
    assert len(trained) == 40
    for r in trained:  # every engine was synced (by broadcast, the default here) and checked, nothing failed
        assert r["sync/engines_checked"] == 2.0 and r["sync/probe_max_diff"] < 1e-3
        assert r["cluster/rollout_restarts"] == r["cluster/reward_restarts"] == r["cluster/broadcast_failures"] == 0.0
    assert (runs / "rl" / "final" / "model.safetensors").is_file()
    assert (runs / "rl" / "final" / "tokenizer.json").is_file()


def test_cluster_run_resumes_from_its_checkpoint(runs):
    copy = runs / "rl_resumed"
    shutil.copytree(runs / "rl", copy)
    shutil.rmtree(copy / "checkpoints" / "40")
    assert main(["train", "--resume", str(copy), "--no-progress", "iterations=22"]) == 0
    resumed = {r["iteration"]: r for r in _metrics(copy)}
    assert sorted(i for i in resumed if "reward/mean" in resumed[i]) == list(range(1, 23))
    assert "eval/pass@1" in resumed[22]
    # exact: the rollout workers' sampling generators are checkpointed (cluster.pool.PoolGenerators)
    original = {r["iteration"]: r for r in _metrics(runs / "rl")}
    for i in (21, 22):
        for key in ("reward/mean", "rollout/mean_tokens", "loss/opmd"):
            assert resumed[i][key] == original[i][key], (i, key)


def test_dead_trainer_rank_names_itself(runs, warmed_up_model):
    from longrl.cluster import TrainerRankError
    from longrl.config import RunConfig, load_config
    from longrl.loop import close, setup

    run = setup(load_config(RunConfig, None, [f"model.path={warmed_up_model}", *CLUSTER,
                                              "cluster.rollout_workers=1", "cluster.reward_workers=0"]))
    try:
        victim = RANKS - 1
        ray.kill(run.trainer.actors[victim])
        with pytest.raises(TrainerRankError, match=f"trainer rank {victim} of {RANKS} died during train_iteration"):
            run.trainer.train_iteration([])
    finally:
        close(run)


def test_partial_rollouts_and_replay_buffer_run_unchanged_on_the_cluster(runs, warmed_up_model):
    """Continuations from the driver's buffer go to the pool; importance weights need the trainer
    group's `current_logprobs`; the sampler draws in the driver."""
    partial = ["iterations=4", "world.tasks=['add']", "world.min_level=2", "world.max_level=2",
               "rollout.prompts_per_iter=8", "rollout.samples_per_prompt=4", "rollout.max_new_tokens=48",
               "eval.every=0", "eval.num_prompts=10", "eval.n_samples=1", "eval.max_new_tokens=48",
               "partial.enabled=true", "partial.segment_tokens=16", "partial.max_age=3",
               "partial.segment_loss='importance'", "sampler.kind='prioritized'"]
    assert main(["train", f"out_dir={runs}", "name=partial", f"model.path={warmed_up_model}", "--no-progress",
                 *partial, *CLUSTER]) == 0
    rows = [r for r in _metrics(runs / "partial") if "rollout/continued" in r]
    assert len(rows) == 4 and all(r["rollout/budget_reserved"] <= r["rollout/budget"] for r in rows)
    assert sum(r["rollout/continued"] for r in rows) > 0  # unfinished trajectories came back
    assert any("train/old_token_weight_mean" in r for r in rows)  # weighted by the group's log-probs
    assert all(r["sync/engines_checked"] == 2.0 for r in rows)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed: scripts/setup_vllm.sh")
def test_cluster_run_with_sharded_vllm_engines_learns(runs, warmed_up_model):
    """The same run with each rollout actor's vLLM engine sharded over two processes (tensor
    parallelism, one core per shard here), and the weights through the object store (the run
    above takes the default on CPU, a broadcast from trainer rank 0 over gloo)."""
    sharded = ["rollout.engine=vllm", "rollout.vllm_tensor_parallel_size=2", "cluster.sync_transport=object_store",
               "cluster.reward_workers=0", "checkpoint_every=0"]
    assert main(["train", DEFAULT, f"out_dir={runs}", "name=sharded", f"model.path={warmed_up_model}",
                 "--no-progress", *RL, *CLUSTER, *sharded]) == 0
    rows = _metrics(runs / "sharded")
    start, end = rows[0]["eval/pass@1"], rows[-1]["eval/pass@1"]
    assert end >= start + 0.20, (start, end)
    trained = [r for r in rows if "reward/mean" in r]
    assert len(trained) == 40
    for r in trained:
        assert r["sync/engines_checked"] == 2.0 and r["sync/probe_max_diff"] < 1e-3
        assert r["cluster/rollout_restarts"] == 0.0 and "cluster/broadcast_failures" not in r


def test_a_lora_run_on_the_cluster_trains_the_adapters_and_writes_a_plain_model(runs, warmed_up_model):
    """LoRA adapters on the FSDP2 ranks (as in one process, `test_lora.py`): the engines get the
    merged weights, the check passes, and the final model is a plain one where only the adapted
    projections moved."""
    from safetensors.torch import load_file
    import torch

    lora = ["iterations=3", "model.lora_rank=4", "model.lora_target_modules=['q_proj','v_proj']", "train.lr=1e-2",
            "world.tasks=['add']", "world.min_level=2", "world.max_level=2", "rollout.prompts_per_iter=4",
            "rollout.samples_per_prompt=4", "rollout.max_new_tokens=16", "train.mini_batch_size=8",
            "eval.every=0", "eval.num_prompts=4", "eval.n_samples=1", "eval.max_new_tokens=16",
            "cluster.reward_workers=0"]
    assert main(["train", f"out_dir={runs}", "name=lora", f"model.path={warmed_up_model}", "--no-progress",
                 *lora, *CLUSTER]) == 0
    rows = [r for r in _metrics(runs / "lora") if "reward/mean" in r]
    assert len(rows) == 3 and all(r["sync/engines_checked"] == 2.0 and r["sync/probe_max_diff"] < 1e-3 for r in rows)
    assert all(r["train/trainable_params"] < 20_000 for r in rows)  # the adapters of a ~0.5M-parameter model
    final = load_file(runs / "lora" / "final" / "model.safetensors")
    start = load_file(warmed_up_model / "model.safetensors")
    assert set(final) == set(start)
    moved = {k for k in start if not torch.equal(start[k], final[k])}
    assert moved and all("q_proj.weight" in k or "v_proj.weight" in k for k in moved)
