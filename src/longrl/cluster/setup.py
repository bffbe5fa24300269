"""Start or join Ray, place the actors, and build the run's cluster objects (`setup_cluster`).

Ray. A driver that finds Ray already initialised uses it (tests share one instance); otherwise
it joins `cluster.address` or `$RAY_ADDRESS`, or starts a local instance with `cluster.num_cpus`
CPUs (0: the machine's). `Cluster.close` kills the actors and disconnects only what it started.

Placement (`cluster.placement`), when actors ask for GPUs:
- `colocated`: a placement group of one bundle of one GPU per trainer rank (packed onto as few
  nodes as fit); trainer rank r and the rollout workers r, r + R, r + 2R, ... share bundle r, so
  each engine sits on a trainer rank's GPU (`gpus_per_trainer_rank` + the engines' shares <= 1).
- `split`: no placement group; Ray places each actor where its GPUs are free.
On CPU every actor asks for 0 CPUs: they share the machine, each with `threads` torch threads.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from longrl.cluster.errors import ClusterError
from longrl.cluster.pool import EnginePool, RolloutWorker
from longrl.cluster.rewards import RewardPool, RewardWorker, remote_rewards
from longrl.cluster.sync import ClusterSync
from longrl.cluster.trainer_group import TrainerGroup, TrainerRank
from longrl.weight_sync import sync_tolerance


def start_ray(cluster) -> bool:
    """Connect this driver to Ray (module docstring); True when this call initialised it."""
    if ray.is_initialized():
        return False
    address = cluster.address or os.environ.get("RAY_ADDRESS", "")
    if address:
        ray.init(address=address)
    else:
        ray.init(num_cpus=cluster.num_cpus or os.cpu_count(), include_dashboard=False)
    return True


def worker_seed(seed: int, index: int, generation: int) -> int:
    """Rollout worker `index`'s sampling seed; a restarted worker (`generation` > 0) draws anew."""
    return seed + 1009 * index + 100003 * generation


class Placement:
    """Ray actor options for trainer ranks and rollout workers (module docstring)."""

    def __init__(self, cluster):
        self.cluster, self.group = cluster, None
        gpus = cluster.gpus_per_trainer_rank or cluster.gpus_per_rollout_worker
        if cluster.placement == "colocated" and gpus:
            per_bundle = math.ceil(cluster.rollout_workers / cluster.trainer_ranks)
            need = cluster.gpus_per_trainer_rank + per_bundle * cluster.gpus_per_rollout_worker
            if need > 1 + 1e-9:
                raise ClusterError(
                    f"cluster.placement = colocated puts a trainer rank ({cluster.gpus_per_trainer_rank} GPU) "
                    f"and {per_bundle} rollout worker(s) ({cluster.gpus_per_rollout_worker} GPU each) on one "
                    f"GPU: {need:g} > 1; lower gpus_per_rollout_worker or use placement = split")
            self.group = placement_group([{"GPU": 1}] * cluster.trainer_ranks, strategy="PACK")
            ray.get(self.group.ready())

    def _options(self, gpus: float, bundle: int) -> dict:
        options = {"num_cpus": 0, "num_gpus": gpus}
        if self.group is not None:
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                self.group, placement_group_bundle_index=bundle)
        return options

    def trainer(self, rank: int) -> dict:
        return self._options(self.cluster.gpus_per_trainer_rank, rank)

    def rollout(self, index: int) -> dict:
        return self._options(self.cluster.gpus_per_rollout_worker, index % self.cluster.trainer_ranks)

    def close(self) -> None:
        if self.group is not None:
            remove_placement_group(self.group)


@dataclass
class Cluster:
    """The remote objects behind one run; `close` ends them."""

    trainer: TrainerGroup
    engine: EnginePool
    rewards: dict
    sync: ClusterSync
    reward_pool: RewardPool | None
    placement: Placement
    started_ray: bool

    def close(self) -> None:
        for part in (self.engine, self.trainer, self.reward_pool):
            if part is not None:
                part.shutdown()
        self.placement.close()
        if self.started_ray:
            ray.shutdown()


def setup_cluster(config, model_path: str, tokenizer, engine_factory: Callable | None = None) -> Cluster:
    """Start the actors of `config.cluster` for the model in `model_path` (module docstring).

    `engine_factory` replaces `make_engine` in the rollout workers (fault-injection tests).
    """
    c = config.cluster
    started = start_ray(c)
    placement = Placement(c)
    try:
        rank_cls = ray.remote(TrainerRank)
        trainer = TrainerGroup([rank_cls.options(**placement.trainer(r)).remote()
                                for r in range(c.trainer_ranks)], model_path, config)
        worker_cls = ray.remote(RolloutWorker)
        pool = EnginePool(lambda i, generation: worker_cls.options(**placement.rollout(i)).remote(
            model_path, config, worker_seed(config.seed, i, generation), engine_factory), c.rollout_workers,
            call_timeout_s=c.call_timeout_s)
        reward_pool, rewards = None, None
        if c.reward_workers:
            reward_cls = ray.remote(RewardWorker)
            reward_pool = RewardPool(lambda i: reward_cls.options(num_cpus=0).remote(config.reward, config.threads),
                                     c.reward_workers, call_timeout_s=c.call_timeout_s)
            rewards = remote_rewards(reward_pool, config.reward)
        tolerance = sync_tolerance(config.rollout.sync_check_tolerance, config.model.dtype)
        sync = ClusterSync(trainer, pool, tokenizer, tolerance, c.sync_bucket_mb,
                           faults=[reward_pool] if reward_pool else [], transport=c.transport(),
                           timeout_s=c.call_timeout_s or 3600.0)
    except BaseException:
        placement.close()
        if started:
            ray.shutdown()
        raise
    return Cluster(trainer, pool, rewards, sync, reward_pool, placement, started)
