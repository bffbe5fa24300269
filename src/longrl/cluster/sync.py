"""Trainer -> every engine after each training phase, then the sync probe on every engine.

The single-process `WeightSync` (weight_sync.py) pushes the trainer's parameters into its one
engine and proves the engine holds them. Across processes:

1. Travel. The trainer group gathers the full parameters (`full_state_dict()` under FSDP2, a
   collective on every rank); rank 0 puts them into Ray's object store in buckets of about
   `cluster.sync_bucket_mb` and hands the driver their refs. Every rollout worker fetches the
   buckets one at a time and loads each into its engine (`RolloutWorker.load_weights`), all
   workers in parallel. The object store keeps one copy per node: workers on the same node read
   the same bytes, and a worker never holds more than one bucket beside its engine.
2. Check. The trainer scores the fixed probe at temperature 1 (`Trainer.token_logprobs`, on every
   rank: under FSDP2 only the trainer's root unit gathers embeddings and head), every worker
   scores it with its engine, and `weight_sync.check_engines` demands that each engine agree
   within the tolerance; `WeightSyncError` names every worker that does not. A skipped push, a
   worker restarted from the old model directory, a lost bucket: each fails here, every iteration.

A worker that dies during the push is restarted and restored (`restore`: the same push and the
same check, for that worker alone), like one that dies while generating.
"""

from __future__ import annotations

import time

import ray

from longrl.cluster.pool import EnginePool
from longrl.cluster.trainer_group import TrainerGroup
from longrl.weight_sync import check_engines, probe_sequence


class ClusterSync:
    """`run.sync` on a cluster: `sync(iteration) -> metrics` (module docstring)."""

    def __init__(self, trainer: TrainerGroup, pool: EnginePool, tokenizer, tolerance: float,
                 bucket_mb: int, faults: list = ()):
        self.trainer, self.pool, self.tolerance = trainer, pool, tolerance
        self.bucket_bytes = max(1, bucket_mb) << 20
        self.probe_ids, self.prompt_len = probe_sequence(tokenizer, trainer.max_position_embeddings())
        self.faults = [pool, *faults]  # whose `take_fault_metrics` join the sync's metrics
        self.iteration = -1
        pool.restore = self.restore

    def __call__(self, iteration: int) -> dict[str, float]:
        self.iteration = iteration
        start = time.perf_counter()
        buckets = self.trainer.weight_buckets(self.bucket_bytes)
        gathered = time.perf_counter()
        slowest_load = self.pool.load_weights_refs(buckets)
        del buckets  # the object store frees them once no worker holds them
        metrics = {"perf/weight_sync_s": time.perf_counter() - start,
                   "perf/weight_gather_s": gathered - start, "perf/weight_load_s": slowest_load}
        if self.tolerance > 0:
            start = time.perf_counter()
            metrics |= self.check()
            metrics["perf/sync_check_s"] = time.perf_counter() - start
        for source in self.faults:
            metrics |= source.take_fault_metrics()
        return metrics

    def check(self, only: int | None = None) -> dict[str, float]:
        """The probe on every worker (or worker `only`) against the trainer's log-probs."""
        trainer_lp = self.trainer.probe_logprobs(self.probe_ids, self.prompt_len)
        if only is None:
            scored = self.pool.score_each([self.probe_ids], [self.prompt_len], 1.0)
            engines = {f"rollout worker {i}": lps[0] for i, lps in enumerate(scored)}
        else:
            worker = self.pool.workers[only]
            lps = ray.get(worker.score.remote([self.probe_ids], [self.prompt_len], 1.0))
            engines = {f"rollout worker {only} (restarted)": lps[0]}
        return check_engines(trainer_lp, engines, self.tolerance, self.iteration)

    def restore(self, index: int) -> None:
        """A restarted worker: the trainer's current weights pushed into it, then checked."""
        buckets = self.trainer.weight_buckets(self.bucket_bytes)
        ray.get(self.pool.push(index, buckets))
        if self.tolerance > 0:
            self.check(only=index)
