"""Rollout actors holding vLLM engines (its CPU build): generation, the weight push and the probe
check on every engine, the same path as the HF engine takes in `test_cluster_pool.py`.

Skipped when vLLM or Ray is not installed. vLLM's CPU attention refuses head_dim 16, so the tiny
model has 2 heads of width 32.
"""

import importlib.util

import pytest

if importlib.util.find_spec("vllm") is None or importlib.util.find_spec("ray") is None:
    pytest.skip("vllm or ray is not installed: run scripts/setup_vllm.sh, pip install 'longrl[ray]'",
                allow_module_level=True)

import ray  # noqa: E402

from longrl.cluster import setup_cluster  # noqa: E402
from longrl.config import RunConfig, TinyModelConfig, load_config  # noqa: E402
from longrl.models import encode_prompt, load_tokenizer  # noqa: E402
from longrl.tiny import save_tiny_model  # noqa: E402
from longrl.types import GenerationRequest, SamplingParams  # noqa: E402


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    model_dir = save_tiny_model(TinyModelConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128),
                                tmp_path_factory.mktemp("vllm_tiny"))
    ray.init(num_cpus=4, include_dashboard=False)
    config = load_config(RunConfig, None, [f"model.path={model_dir}", "threads=1", "rollout.engine=vllm",
                                           "cluster.enabled=true", "cluster.trainer_ranks=1",
                                           "cluster.rollout_workers=2", "cluster.reward_workers=0",
                                           "train.lr=1e-2", "train.mini_batch_size=8"])
    tokenizer = load_tokenizer(model_dir)
    made = setup_cluster(config, str(model_dir), tokenizer)
    yield made, tokenizer
    made.close()
    ray.shutdown()


def test_vllm_rollout_actors_generate_take_weights_and_pass_the_check(cluster):
    made, tokenizer = cluster
    requests = [GenerationRequest(encode_prompt(tokenizer, f"what is {i}+{i}?")) for i in range(6)]
    out = made.engine.generate(requests, SamplingParams(temperature=1.0, max_new_tokens=10))
    assert len(out) == 6 and all(1 <= len(c.token_ids) <= 10 for c in out)
    assert all(len(c.logprobs) == len(c.token_ids) for c in out)
    metrics = made.sync(0)  # push to both vLLM engines, then the probe on each
    assert metrics["sync/probe_max_diff"] <= 1e-3, metrics
