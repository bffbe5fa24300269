"""The weight sync's broadcast transport (`cluster.sync_transport = "broadcast"`): a gloo group of
trainer rank 0 and the rollout workers, beside the FSDP2 group of two trainer ranks; faults
restart the workers that missed the broadcast and rebuild the channel."""

import importlib.util

import pytest
import torch

if importlib.util.find_spec("ray") is None:
    pytest.skip("ray is not installed: pip install 'longrl[ray]'", allow_module_level=True)

import ray  # noqa: E402

from longrl.cluster import setup_cluster  # noqa: E402
from longrl.cluster.broadcast import layout_of, nbytes, pack, unpack  # noqa: E402
from longrl.config import RunConfig, load_config  # noqa: E402
from longrl.models import encode_prompt, load_tokenizer  # noqa: E402
from longrl.rollout.sample import extend  # noqa: E402
from longrl.types import Prompt, SamplingParams, Trajectory  # noqa: E402
from longrl.weight_sync import WeightSyncError  # noqa: E402


def test_pack_and_unpack_keep_every_byte_of_mixed_dtypes():
    bucket = [("a", torch.randn(3, 5)), ("b", torch.randn(7).to(torch.bfloat16)),
              ("c", torch.arange(4, dtype=torch.int64).reshape(2, 2)), ("d", torch.randn(4, 6)[:, ::2])]
    layout = layout_of([bucket])
    flat = pack(bucket, torch.device("cpu"))
    assert flat.dtype == torch.uint8 and flat.numel() == nbytes(layout[0])
    for (name, tensor), (got_name, got) in zip(bucket, unpack(flat, layout[0])):
        assert got_name == name and got.dtype == tensor.dtype and torch.equal(got, tensor)


@pytest.fixture(scope="module")
def cluster(tiny_model_dir):
    ray.init(num_cpus=4, include_dashboard=False)
    config = load_config(RunConfig, None, [f"model.path={tiny_model_dir}", "threads=1", "cluster.enabled=true",
                                           "cluster.trainer_ranks=2", "cluster.rollout_workers=2",
                                           "cluster.reward_workers=0", "cluster.sync_transport=broadcast",
                                           "cluster.call_timeout_s=120",
                                           "train.lr=1e-2", "train.mini_batch_size=8"])
    tokenizer = load_tokenizer(tiny_model_dir)
    made = setup_cluster(config, str(tiny_model_dir), tokenizer)
    made.sync.bucket_bytes = 64 << 10  # the tiny model (~0.4 MB) in several buckets
    yield made, tokenizer
    made.close()
    ray.shutdown()


def _train_once(made, tokenizer):
    """One training phase on 8 sampled answers with alternating rewards: the weights move."""
    trajectories = []
    for i in range(2):
        prompt = Prompt(id=f"p{i}", text=f"what is {i}+1?")
        trajectories += [Trajectory(prompt, j, encode_prompt(tokenizer, prompt)) for j in range(4)]
    extend(made.engine, tokenizer, [(t, None) for t in trajectories], SamplingParams(max_new_tokens=8), 0)
    for j, t in enumerate(trajectories):
        t.reward = float(j % 2)
    made.trainer.train_iteration(trajectories)


def test_broadcast_brings_every_engine_to_the_trainers_weights(cluster):
    made, tokenizer = cluster
    _train_once(made, tokenizer)
    with pytest.raises(WeightSyncError):  # the engines still hold the old weights
        made.sync.check()
    metrics = made.sync(1)
    assert metrics["sync/engines_checked"] == 2.0 and metrics["sync/probe_max_diff"] <= 1e-5, metrics
    assert metrics["cluster/broadcast_failures"] == 0.0
    layout = made.sync.channel[2]
    assert len(layout) > 2  # several broadcasts
    trainer_lp = made.trainer.probe_logprobs(made.sync.probe_ids, made.sync.prompt_len)
    for engine_lp in made.engine.score_each([made.sync.probe_ids], [made.sync.prompt_len]):
        torch.testing.assert_close(torch.tensor(engine_lp[0]), torch.tensor(trainer_lp), atol=1e-5, rtol=0)
    _train_once(made, tokenizer)
    channel = made.sync.channel
    assert made.sync(2)["sync/probe_max_diff"] <= 1e-5
    assert made.sync.channel is channel  # the same workers: the channel is reused


def test_a_worker_dead_before_the_broadcast_is_replaced_and_the_channel_rebuilt(cluster):
    made, tokenizer = cluster
    _train_once(made, tokenizer)
    ray.kill(made.engine.workers[1])
    metrics = made.sync(3)
    assert metrics["cluster/broadcast_failures"] >= 1.0  # worker 1, and worker 0 if the broadcast broke first
    assert metrics["cluster/rollout_restarts"] == metrics["cluster/broadcast_failures"]
    assert metrics["sync/engines_checked"] == 2.0 and metrics["sync/probe_max_diff"] <= 1e-5
    old = made.sync.channel
    _train_once(made, tokenizer)
    metrics = made.sync(4)  # a new channel over the replacement actors
    assert made.sync.channel is not old and made.sync.channel[0] == tuple(made.engine.generations)
    assert metrics["cluster/broadcast_failures"] == 0.0 and metrics["sync/probe_max_diff"] <= 1e-5
