"""EnginePool, ClusterSync, reward actors and TrainerGroup on a local Ray instance, tiny model.

One Ray instance and one cluster (1 trainer rank, 2 rollout workers) are shared by the module.
Rollout worker 1's first engine exits its process on its first `generate` (`_faulty_engine`),
so the first generation exercises the restart path; the tests are written to run in file order.
"""

import os
import threading
import time

import pytest
import torch

ray = pytest.importorskip("ray")

import ray.cloudpickle  # noqa: E402,I001

from longrl.cluster import TrainerRankError, setup_cluster  # noqa: E402
from longrl.cluster.setup import worker_seed  # noqa: E402
from longrl.config import RunConfig, load_config  # noqa: E402
from longrl.models import encode_prompt, load_policy, load_tokenizer  # noqa: E402
from longrl.rollout.engine import HFEngine, make_engine  # noqa: E402
from longrl.types import GenerationRequest, SamplingParams, Trajectory, Prompt  # noqa: E402
from longrl.weight_sync import WeightSyncError  # noqa: E402

ray.cloudpickle.register_pickle_by_value(__import__(__name__))  # the engine factory travels by value
SEED = 3
SLOW_S = 3.0


class _Faulty:
    """Worker 1's first engine exits on its first generate; an engine sleeps while `slow` exists
    and is empty or names its seed."""

    def __init__(self, engine, exits: bool, slow: str, seed: int):
        self.engine, self.exits, self.slow, self.seed = engine, exits, slow, seed

    def generate(self, requests, params):
        if self.exits:
            os._exit(1)
        if os.path.exists(self.slow) and open(self.slow).read() in ("", str(self.seed)):
            time.sleep(SLOW_S)
        return self.engine.generate(requests, params)

    def __getattr__(self, name):
        return getattr(self.engine, name)


def _faulty_engine(slow: str):
    def factory(config, model, tokenizer, seed):
        return _Faulty(make_engine(config, model, tokenizer, seed), seed == worker_seed(SEED, 1, 0), slow, seed)
    return factory


@pytest.fixture(scope="module")
def cluster(tiny_model_dir, tmp_path_factory):
    ray.init(num_cpus=4, include_dashboard=False)
    config = load_config(RunConfig, None, [f"model.path={tiny_model_dir}", f"seed={SEED}", "threads=1",
                                           "cluster.enabled=true", "cluster.trainer_ranks=1",
                                           "cluster.rollout_workers=2", "cluster.reward_workers=0",
                                           "cluster.sync_transport=object_store",  # its push is what faults hit here
                                           "train.lr=1e-2", "train.mini_batch_size=8"])
    slow = str(tmp_path_factory.mktemp("flags") / "slow")
    tokenizer = load_tokenizer(tiny_model_dir)
    made = setup_cluster(config, str(tiny_model_dir), tokenizer, engine_factory=_faulty_engine(slow))
    yield made, tokenizer, slow
    made.close()
    ray.shutdown()


def _requests(tokenizer, n):
    return [GenerationRequest(encode_prompt(tokenizer, f"what is {i}+{2 * i}?")) for i in range(n)]


def test_dead_worker_loses_nothing_and_reissues_only_its_chunk(cluster, tiny_model_dir):
    made, tokenizer, _ = cluster
    requests = _requests(tokenizer, 7)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=12)
    out = made.engine.generate(requests, greedy)  # worker 1 (requests 4..6) exits and is replaced
    faults = made.engine.take_fault_metrics()
    assert faults == {"cluster/rollout_restarts": 1.0, "cluster/reissued_requests": 3.0, "cluster/rollout_hangs": 0.0}
    model, _ = load_policy(tiny_model_dir)
    expected = HFEngine(model, tokenizer, seed=SEED).generate(requests, greedy)
    assert [c.token_ids for c in out] == [c.token_ids for c in expected]  # order and content
    assert [c.finish_reason for c in out] == [c.finish_reason for c in expected]
    torch.testing.assert_close([torch.tensor(c.logprobs) for c in out],
                               [torch.tensor(c.logprobs) for c in expected], atol=1e-5, rtol=0)


def test_sampled_completions_come_back_in_order_with_their_caps(cluster):
    made, tokenizer, _ = cluster
    requests = [GenerationRequest(encode_prompt(tokenizer, f"q{i}"), max_new_tokens=1 + i) for i in range(5)]
    out = made.engine.generate(requests, SamplingParams(temperature=1.0, max_new_tokens=64))
    assert [len(c.token_ids) <= 1 + i for i, c in enumerate(out)] == [True] * 5
    assert len(out) == 5 and all(len(c.logprobs) == len(c.token_ids) for c in out)
    assert made.engine.take_fault_metrics()["cluster/rollout_restarts"] == 0


def test_worker_killed_during_generate_is_replaced_with_current_weights(cluster):
    made, tokenizer, slow = cluster
    requests = _requests(tokenizer, 6)
    open(slow, "w").close()  # every engine now sleeps SLOW_S in generate: the kill lands mid-call
    killer = threading.Timer(SLOW_S / 3, ray.kill, [made.engine.workers[0]])
    killer.start()
    try:
        out = made.engine.generate(requests, SamplingParams(temperature=1.0, max_new_tokens=8))
    finally:
        killer.join()
        os.remove(slow)
    assert len(out) == 6 and all(c.token_ids for c in out)
    assert made.engine.take_fault_metrics() == {"cluster/rollout_restarts": 1.0, "cluster/reissued_requests": 3.0,
                                                "cluster/rollout_hangs": 0.0}


def _train_once(made, tokenizer):
    """One training phase with alternating rewards: the trainer's weights move."""
    prompts = [Prompt(id=f"p{i}", text=f"what is {i}+1?") for i in range(2)]
    trajectories = []
    for p in prompts:
        ids = encode_prompt(tokenizer, p)
        trajectories += [Trajectory(p, j, ids) for j in range(4)]
    from longrl.rollout.sample import extend

    extend(made.engine, tokenizer, [(t, None) for t in trajectories], SamplingParams(max_new_tokens=8), 0)
    for j, t in enumerate(trajectories):
        t.reward = float(j % 2)
    return made.trainer.train_iteration(trajectories)


def test_sync_reaches_and_checks_every_engine(cluster):
    made, tokenizer, _ = cluster
    _train_once(made, tokenizer)
    metrics = made.sync(1)
    assert metrics["sync/engines_checked"] == 2.0
    assert metrics["sync/probe_max_diff"] <= 1e-5
    trainer_lp = made.trainer.probe_logprobs(made.sync.probe_ids, made.sync.prompt_len)
    for engine_lp in made.engine.score_each([made.sync.probe_ids], [made.sync.prompt_len]):
        torch.testing.assert_close(torch.tensor(engine_lp[0]), torch.tensor(trainer_lp), atol=1e-5, rtol=0)


def test_sync_that_skips_one_engine_fails_naming_it(cluster, monkeypatch):
    made, tokenizer, _ = cluster
    _train_once(made, tokenizer)
    push = made.engine.push
    monkeypatch.setattr(made.engine, "push", lambda i, buckets: push(i, [] if i == 1 else buckets))
    with pytest.raises(WeightSyncError, match=r"1 of 2 engines .*rollout worker 1 \(by") as caught:
        made.sync(2)
    assert "rollout worker 0" not in str(caught.value)
    monkeypatch.undo()
    assert made.sync(2)["sync/engines_checked"] == 2.0  # a full push repairs it


REWARD = """
import os

def reward(prompt, response, log, marker):
    if not os.path.exists(marker):  # the first call of all kills its actor
        open(marker, "w").close()
        os._exit(1)
    with open(log, "a") as f:
        f.write(prompt.id + "\\n")
    return float(len(response) % 3 == 0)
"""


def test_dead_reward_actor_is_replaced_and_its_chunk_scored_once(cluster, tmp_path):
    import copy

    from longrl.cluster.rewards import RewardPool, RewardWorker, remote_rewards
    from longrl.config import RewardConfig
    from longrl.rewards.registry import build_rewards
    from longrl.rewards.score import score

    (tmp_path / "fault.py").write_text(REWARD)
    ref = f"{tmp_path / 'fault.py'}:reward"
    log, marker = tmp_path / "scored.txt", tmp_path / "died"
    config = RewardConfig(names=[ref], weights=[0.5], options={ref: {"log": str(log), "marker": str(marker)}})
    worker = ray.remote(RewardWorker)
    pool = RewardPool(lambda i: worker.options(num_cpus=0).remote(config, 1), 2)
    trajectories = [Trajectory(Prompt(f"p{i}", "q"), 0, [1], text="x" * i) for i in range(6)]
    local = copy.deepcopy(trajectories)
    try:
        metrics = score(trajectories, remote_rewards(pool, config))
        assert pool.take_fault_metrics()["cluster/reward_restarts"] >= 1
    finally:
        pool.shutdown()
    assert sorted(log.read_text().split()) == [f"p{i}" for i in range(6)]  # each scored exactly once
    log.unlink()
    assert metrics == score(local, build_rewards(config))
    assert [(t.reward, t.reward_info) for t in trajectories] == [(t.reward, t.reward_info) for t in local]
    assert [t.reward for t in trajectories] == [0.5, 0.0, 0.0, 0.5, 0.0, 0.0]


def _reward_pool(tmp_path, source: str, **options):
    """2 reward actors scoring with the reward function in `source` (keyword options); the pool,
    its remote rewards and the same rewards built in process."""
    from longrl.cluster.rewards import RewardPool, RewardWorker, remote_rewards
    from longrl.config import RewardConfig
    from longrl.rewards.registry import build_rewards

    (tmp_path / "reward.py").write_text(source)
    ref = f"{tmp_path / 'reward.py'}:reward"
    config = RewardConfig(names=[ref], weights=[0.5], options={ref: options})
    worker = ray.remote(RewardWorker)
    pool = RewardPool(lambda i: worker.options(num_cpus=0).remote(config, 1), 2)
    return pool, remote_rewards(pool, config), build_rewards(config)


LOGGING_REWARD = """
def reward(prompt, response, log):
    with open(log, "a") as f:
        f.write("scored " + prompt.id + "\\n")
    return float(len(response) % 2)
"""


def test_fast_workers_trajectories_are_scored_before_the_slow_worker_returns(cluster, tmp_path):
    import copy

    from longrl.rewards.score import prefetch, score
    from longrl.rollout.sample import sample

    made, tokenizer, slow = cluster
    log = tmp_path / "log.txt"
    pool, rewards, local = _reward_pool(tmp_path, LOGGING_REWARD, log=str(log))
    ray.get([w.__ray_ready__.remote() for w in pool.workers])  # started before anything is timed

    def arrived(finished):  # the driver's side of the same log, then scoring starts
        with open(log, "a") as f:
            f.write("arrived " + " ".join(t.prompt.id for t in finished) + "\n")
        prefetch(rewards, finished)

    with open(slow, "w") as f:  # only worker 1 (prompt p1's two rows) sleeps
        f.write(str(worker_seed(SEED, 1, made.engine.generations[1])))
    prompts = [Prompt(f"p{i}", f"what is {i}+1?") for i in range(2)]
    try:
        trajectories, _ = sample(made.engine, tokenizer, prompts, 2, SamplingParams(max_new_tokens=4),
                                 on_finished=arrived)
        scored_copy = copy.deepcopy(trajectories)
        metrics = score(trajectories, rewards)
        faults = pool.take_fault_metrics()
    finally:
        os.remove(slow)
        pool.shutdown()
    lines = log.read_text().splitlines()
    assert lines[0] == "arrived p0 p0"
    assert sorted(lines[1:3]) == ["scored p0", "scored p0"]  # both scored while worker 1 sleeps
    assert lines[3] == "arrived p1 p1"
    assert sorted(lines[4:]) == ["scored p1", "scored p1"]  # and nothing scored twice
    assert faults == {"cluster/reward_restarts": 0.0, "cluster/reward_hangs": 0.0, "cluster/scored_during_rollout": 1.0}
    assert metrics == score(scored_copy, local)
    assert [t.reward for t in trajectories] == [0.5 * (len(t.text) % 2) for t in trajectories]


def test_prefetched_items_are_scored_once_when_a_reward_actor_dies(cluster, tmp_path):
    import copy

    from longrl.rewards.score import prefetch, score

    log, marker = tmp_path / "scored.txt", tmp_path / "died"
    pool, rewards, local = _reward_pool(tmp_path, REWARD, log=str(log), marker=str(marker))
    trajectories = [Trajectory(Prompt(f"p{i}", "q"), 0, [1], text="x" * i) for i in range(6)]
    local_copy = copy.deepcopy(trajectories)
    try:
        prefetch(rewards, trajectories[:4])  # the first chunk to arrive kills its actor
        metrics = score(trajectories, rewards)
        faults = pool.take_fault_metrics()
    finally:
        pool.shutdown()
    assert sorted(log.read_text().split()) == [f"p{i}" for i in range(6)]  # each scored exactly once
    assert faults == {"cluster/reward_restarts": 1.0, "cluster/reward_hangs": 0.0, "cluster/scored_during_rollout": 4 / 6}
    assert metrics == score(local_copy, local)
    assert [t.reward for t in trajectories] == [0.5, 0.0, 0.0, 0.5, 0.0, 0.0]


def test_generate_stream_with_a_dead_worker_loses_nothing(cluster):
    made, tokenizer, slow = cluster
    requests = _requests(tokenizer, 6)
    open(slow, "w").close()  # every engine sleeps SLOW_S: the kill lands mid-call
    killer = threading.Timer(SLOW_S / 3, ray.kill, [made.engine.workers[0]])
    killer.start()
    try:
        streamed = list(made.engine.generate_stream(requests, SamplingParams(temperature=1.0, max_new_tokens=8)))
    finally:
        killer.join()
        os.remove(slow)
    assert [list(indices) for indices, _ in streamed] == [[3, 4, 5], [0, 1, 2]]  # worker 0's chunk re-run
    assert all(len(out) == 3 and all(c.token_ids for c in out) for _, out in streamed)
    assert made.engine.take_fault_metrics() == {"cluster/rollout_restarts": 1.0, "cluster/reissued_requests": 3.0,
                                                "cluster/rollout_hangs": 0.0}


def test_hung_worker_is_replaced_after_the_call_timeout(cluster, monkeypatch):
    made, tokenizer, slow = cluster
    monkeypatch.setattr(made.engine, "call_timeout_s", SLOW_S / 3)
    with open(slow, "w") as f:  # worker 0 sleeps past the timeout; its replacement (a new seed) does not
        f.write(str(worker_seed(SEED, 0, made.engine.generations[0])))
    requests = _requests(tokenizer, 6)
    try:
        out = made.engine.generate(requests, SamplingParams(temperature=1.0, max_new_tokens=8))
    finally:
        os.remove(slow)
    assert len(out) == 6 and all(c.token_ids for c in out)
    assert made.engine.take_fault_metrics() == {"cluster/rollout_restarts": 1.0, "cluster/reissued_requests": 3.0,
                                                "cluster/rollout_hangs": 1.0}


HANGING_REWARD = """
import os, time

def reward(prompt, response, marker):
    try:  # the first call of all (one, however the calls race) hangs; its actor stays alive
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        pass
    else:
        time.sleep(60)
    return float(len(response) % 3 == 0)
"""


def test_hung_reward_actor_is_replaced_after_the_call_timeout(cluster, tmp_path):
    from longrl.rewards.score import score

    pool, rewards, local = _reward_pool(tmp_path, HANGING_REWARD, marker=str(tmp_path / "hung"))
    ray.get([w.__ray_ready__.remote() for w in pool.workers])
    pool.call_timeout_s = 2.0
    trajectories = [Trajectory(Prompt(f"p{i}", "q"), 0, [1], text="x" * i) for i in range(6)]
    try:
        start = time.monotonic()
        score(trajectories, rewards)
        took = time.monotonic() - start
        faults = pool.take_fault_metrics()
    finally:
        pool.shutdown()
    assert took < 30  # not the hung call's 60 s
    assert faults["cluster/reward_hangs"] == 1.0 and faults["cluster/reward_restarts"] == 1.0
    assert [t.reward for t in trajectories] == [0.5, 0.0, 0.0, 0.5, 0.0, 0.0]


def test_prefetched_futures_never_asked_for_are_let_go(cluster, tmp_path):
    from longrl.cluster.rewards import KEEP_CALLS
    from longrl.rewards.score import prefetch, score

    pool, rewards, _ = _reward_pool(tmp_path, LOGGING_REWARD, log=str(tmp_path / "log.txt"))
    dropped = [Trajectory(Prompt(f"d{i}", "q"), 0, [1], text="x" * i) for i in range(4)]  # a group dropped by age
    try:
        prefetch(rewards, dropped)
        (remote, _), = rewards.values()
        assert len(remote.held) == 4
        for i in range(KEEP_CALLS):
            score([Trajectory(Prompt(f"p{i}", "q"), 0, [1], text="xy")], rewards)
        assert remote.held == {}
    finally:
        pool.shutdown()


def test_dead_trainer_rank_stops_with_its_rank_named(cluster):
    made, tokenizer, _ = cluster
    ray.kill(made.trainer.actors[0])
    with pytest.raises(TrainerRankError, match=r"trainer rank 0 of 1 died during current_logprobs.*--resume"):
        made.trainer.current_logprobs([])
