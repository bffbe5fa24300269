"""The weight sync's broadcast transport (`cluster.sync_transport = "broadcast"`): a gloo group of
trainer rank 0 and the rollout workers, beside the FSDP2 group of two trainer ranks; faults
restart the workers that missed the broadcast and rebuild the channel."""

import importlib.util
import os
import threading
import time

import pytest
import torch

if importlib.util.find_spec("ray") is None:
    pytest.skip("ray is not installed: pip install 'longrl[ray]'", allow_module_level=True)

import ray  # noqa: E402

from longrl.cluster import setup_cluster  # noqa: E402
from longrl.cluster.setup import worker_seed  # noqa: E402
from longrl.cluster.broadcast import layout_of, nbytes, pack, unpack  # noqa: E402
from longrl.config import RunConfig, load_config  # noqa: E402
from longrl.models import load_tokenizer  # noqa: E402
from longrl.rollout.engine import make_engine  # noqa: E402
from longrl.weight_sync import WeightSyncError  # noqa: E402
from tests.unit.test_cluster_pool import _train_once  # noqa: E402  one training phase that moves the weights

ray.cloudpickle.register_pickle_by_value(__import__(__name__))  # the engine factory travels by value
SLOW_S = 2.0


def test_pack_and_unpack_keep_every_byte_of_mixed_dtypes():
    bucket = [("a", torch.randn(3, 5)), ("b", torch.randn(7).to(torch.bfloat16)),
              ("c", torch.arange(4, dtype=torch.int64).reshape(2, 2)), ("d", torch.randn(4, 6)[:, ::2])]
    layout = layout_of([bucket])
    flat = pack(bucket, torch.device("cpu"))
    assert flat.dtype == torch.uint8 and flat.numel() == nbytes(layout[0])
    for (name, tensor), (got_name, got) in zip(bucket, unpack(flat, layout[0])):
        assert got_name == name and got.dtype == tensor.dtype and torch.equal(got, tensor)


class _SlowLoads:
    """An engine whose weight loads sleep while the file `slow` names its seed (so a kill lands
    mid-broadcast; its replacement has another seed and loads at full speed)."""

    def __init__(self, engine, slow: str, seed: int):
        self.engine, self.slow, self.seed = engine, slow, seed

    def load_weights(self, state):
        if os.path.exists(self.slow) and open(self.slow).read() == str(self.seed):
            time.sleep(SLOW_S)
        return self.engine.load_weights(state)

    def __getattr__(self, name):
        return getattr(self.engine, name)


def _slow_engine(slow: str):
    def factory(config, model, tokenizer, seed):
        return _SlowLoads(make_engine(config, model, tokenizer, seed), slow, seed)
    return factory


@pytest.fixture(scope="module")
def cluster(tiny_model_dir, tmp_path_factory):
    ray.init(num_cpus=4, include_dashboard=False)
    config = load_config(RunConfig, None, [f"model.path={tiny_model_dir}", "threads=1", "cluster.enabled=true",
                                           "cluster.trainer_ranks=2", "cluster.rollout_workers=2",
                                           "cluster.reward_workers=0", "cluster.sync_transport=broadcast",
                                           "cluster.call_timeout_s=120",
                                           "train.lr=1e-2", "train.mini_batch_size=8"])
    tokenizer = load_tokenizer(tiny_model_dir)
    slow = str(tmp_path_factory.mktemp("flags") / "slow")
    made = setup_cluster(config, str(tiny_model_dir), tokenizer, engine_factory=_slow_engine(slow))
    made.sync.bucket_bytes = 64 << 10  # the tiny model (~0.4 MB) in several buckets
    yield made, tokenizer, slow
    made.close()
    ray.shutdown()


def test_broadcast_brings_every_engine_to_the_trainers_weights(cluster):
    made, tokenizer, _ = cluster
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
    made, tokenizer, _ = cluster
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


def test_a_worker_killed_mid_broadcast_stops_the_others_at_once_and_nothing_is_lost(cluster):
    made, tokenizer, slow = cluster
    _train_once(made, tokenizer)
    made.sync(5)  # the channel is current
    _train_once(made, tokenizer)
    with open(slow, "w") as f:  # worker 1's loads now sleep SLOW_S: it dies while rank 0 is still sending
        f.write(str(worker_seed(0, 1, made.engine.generations[1])))
    killer = threading.Timer(SLOW_S / 2, ray.kill, [made.engine.workers[1]])
    killer.start()
    start = time.monotonic()
    try:
        metrics = made.sync(6)
    finally:
        killer.join()
        os.remove(slow)
    # rank 0's send to the dead worker fails and closes its end, so worker 0 fails too instead of
    # waiting out the channel's 120 s timeout; both are replaced and restored with a check
    assert metrics["cluster/broadcast_failures"] == 2.0 and metrics["cluster/rollout_restarts"] == 2.0
    assert time.monotonic() - start < 60
    assert metrics["sync/engines_checked"] == 2.0 and metrics["sync/probe_max_diff"] <= 1e-5
    assert made.sync(7)["cluster/broadcast_failures"] == 0.0  # a new channel over the replacements


def test_a_worker_dead_when_the_channel_is_built_is_replaced_and_this_sync_takes_the_object_store(cluster):
    made, tokenizer, _ = cluster
    _train_once(made, tokenizer)
    made.sync.join_timeout_s = 10.0  # the others wait this long for the dead member
    made.sync.bucket_bytes = 128 << 10  # a new layout: the channel is built again at this sync
    ray.kill(made.engine.workers[0])
    try:
        metrics = made.sync(8)
    finally:
        made.sync.bucket_bytes = 64 << 10
    assert made.sync.channel is None and "perf/weight_gather_s" in metrics  # the object store carried it
    assert metrics["cluster/broadcast_failures"] == 1.0 and metrics["cluster/rollout_restarts"] == 1.0
    assert metrics["sync/engines_checked"] == 2.0 and metrics["sync/probe_max_diff"] <= 1e-5
    _train_once(made, tokenizer)
    metrics = made.sync(9)  # the next sync builds the channel over the replacement
    assert made.sync.channel is not None and metrics["cluster/broadcast_failures"] == 0.0
    assert metrics["sync/probe_max_diff"] <= 1e-5
