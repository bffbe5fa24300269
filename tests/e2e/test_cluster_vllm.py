"""Rollout actors holding vLLM engines (its CPU build): generation, the weight push and the probe
check on every engine, the same path as the HF engine takes in `test_cluster_pool.py`; then the
same with each engine sharded over two worker processes (`rollout.vllm_tensor_parallel_size = 2`,
the tensor-parallel layout of GPUs, one core per rank here), including an actor killed mid-run.

Skipped when vLLM or Ray is not installed. vLLM's CPU attention refuses head_dim 16, so the tiny
model has 2 heads of width 32.
"""

import importlib.util
import time

import pytest

if importlib.util.find_spec("vllm") is None or importlib.util.find_spec("ray") is None:
    pytest.skip("vllm or ray is not installed: run scripts/setup_vllm.sh, pip install 'longrl[ray]'",
                allow_module_level=True)

import psutil  # noqa: E402
import ray  # noqa: E402

from longrl.cluster import setup_cluster  # noqa: E402
from longrl.config import RunConfig, TinyModelConfig, load_config  # noqa: E402
from longrl.models import encode_prompt, load_tokenizer  # noqa: E402
from longrl.tiny import save_tiny_model  # noqa: E402
from longrl.types import GenerationRequest, SamplingParams  # noqa: E402
from longrl.weight_sync import WeightSyncError  # noqa: E402
from tests.unit.test_cluster_pool import _train_once  # noqa: E402  one training phase that moves the weights


@pytest.fixture(scope="module", params=[1, 2], ids=["whole", "sharded"])
def cluster(request, tmp_path_factory):
    model_dir = save_tiny_model(TinyModelConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128),
                                tmp_path_factory.mktemp("vllm_tiny"))
    ray.init(num_cpus=4, include_dashboard=False)
    config = load_config(RunConfig, None, [f"model.path={model_dir}", "threads=1", "rollout.engine=vllm",
                                           f"rollout.vllm_tensor_parallel_size={request.param}",
                                           # both transports: the object store to whole engines, a broadcast to sharded ones
                                           "cluster.sync_transport=" + ("object_store" if request.param == 1 else "broadcast"),
                                           "cluster.enabled=true", "cluster.trainer_ranks=1",
                                           "cluster.rollout_workers=2", "cluster.reward_workers=0",
                                           "train.lr=1e-2", "train.mini_batch_size=8"])
    tokenizer = load_tokenizer(model_dir)
    made = setup_cluster(config, str(model_dir), tokenizer)
    yield made, tokenizer, request.param
    made.close()
    ray.shutdown()


def _requests(tokenizer, n):
    return [GenerationRequest(encode_prompt(tokenizer, f"what is {i}+{i}?")) for i in range(n)]


def test_vllm_rollout_actors_generate_take_weights_and_pass_the_check(cluster):
    made, tokenizer, _ = cluster
    out = made.engine.generate(_requests(tokenizer, 6), SamplingParams(temperature=1.0, max_new_tokens=10))
    assert len(out) == 6 and all(1 <= len(c.token_ids) <= 10 for c in out)
    assert all(len(c.logprobs) == len(c.token_ids) for c in out)
    _train_once(made, tokenizer)
    with pytest.raises(WeightSyncError, match="rollout worker 0"):  # the engines still hold the old weights
        made.sync.check()
    metrics = made.sync(1)  # push to both vLLM engines, then the probe on each
    assert metrics["sync/engines_checked"] == 2 and metrics["sync/probe_max_diff"] <= 1e-3, metrics


def _engine_processes(pid: int) -> set[int]:
    """The processes under a rollout actor (vLLM's shard workers when the engine is sharded)."""
    return {p.pid for p in psutil.Process(pid).children(recursive=True)}


def test_a_killed_sharded_actor_takes_its_shard_workers_along_and_is_replaced(cluster):
    made, tokenizer, tp = cluster
    if tp == 1:
        pytest.skip("an unsharded engine has no worker processes of its own")
    pid = ray.get(made.engine.workers[0].pid.remote())
    shards = _engine_processes(pid)
    assert len(shards) >= 2  # one process per shard (vLLM may add helpers)
    _train_once(made, tokenizer)
    made.sync(2)
    ray.kill(made.engine.workers[0])  # dead before the call: its chunk fails and is issued again
    out = made.engine.generate(_requests(tokenizer, 6), SamplingParams(temperature=1.0, max_new_tokens=8))
    assert len(out) == 6 and all(c.token_ids for c in out)
    assert made.engine.take_fault_metrics() == {"cluster/rollout_restarts": 1.0, "cluster/reissued_requests": 3.0,
                                                "cluster/rollout_hangs": 0.0}
    deadline = time.monotonic() + 30
    while (alive := [p for p in shards if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]) \
            and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not alive, f"shard workers outlived their killed actor: {alive}"
    # the replacement holds the trainer's current weights, sharded again (restore checked it; so does this)
    assert len(_engine_processes(ray.get(made.engine.workers[0].pid.remote()))) >= 2
    assert made.sync.check()["sync/engines_checked"] == 2
