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

Transport (`cluster.sync_transport`). Step 1 above is `object_store`. `broadcast` sends the
gathered weights from trainer rank 0 to every worker as one torch.distributed broadcast per
bucket (cluster/broadcast.py: gloo on CPU, NCCL GPU to GPU), over a channel built at the first
sync and again after any worker was replaced. A worker that does not receive the whole broadcast
(it died, or the broadcast failed) is restarted and restored through the object store; the check
of step 2 is the same for both transports.
"""

from __future__ import annotations

import logging
import time

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from longrl.cluster.pool import EnginePool
from longrl.cluster.trainer_group import TrainerGroup
from longrl.weight_sync import check_engines, probe_sequence

log = logging.getLogger(__name__)
JOIN_TIMEOUT_S = 60.0  # members of a new broadcast channel wait this long for each other


class ClusterSync:
    """`run.sync` on a cluster: `sync(iteration) -> metrics` (module docstring)."""

    def __init__(self, trainer: TrainerGroup, pool: EnginePool, tokenizer, tolerance: float,
                 bucket_mb: int, faults: list = (), transport: str = "object_store", timeout_s: float = 600.0):
        self.trainer, self.pool, self.tolerance = trainer, pool, tolerance
        self.bucket_bytes = max(1, bucket_mb) << 20
        self.transport, self.timeout_s = transport, timeout_s
        self.channel: tuple | None = None  # (worker generations, bucket bytes, layout) it was built for
        self.join_timeout_s = min(timeout_s, JOIN_TIMEOUT_S)
        self.probe_ids, self.prompt_len = probe_sequence(tokenizer, trainer.max_position_embeddings())
        self.faults = [pool, *faults]  # whose `take_fault_metrics` join the sync's metrics
        self.iteration = -1
        pool.restore = self.restore

    def __call__(self, iteration: int) -> dict[str, float]:
        self.iteration = iteration
        start = time.perf_counter()
        metrics = self.broadcast() if self.transport == "broadcast" else self.push_through_object_store()
        metrics["perf/weight_sync_s"] = time.perf_counter() - start
        if self.tolerance > 0:
            start = time.perf_counter()
            metrics |= self.check()
            metrics["perf/sync_check_s"] = time.perf_counter() - start
        for source in self.faults:
            metrics |= source.take_fault_metrics()
        return metrics

    def push_through_object_store(self) -> dict[str, float]:
        """Step 1 through Ray's object store (module docstring)."""
        start = time.perf_counter()
        buckets = self.trainer.weight_buckets(self.bucket_bytes)
        gathered = time.perf_counter()
        slowest_load = self.pool.load_weights_refs(buckets)
        del buckets  # the object store frees them once no worker holds them
        return {"perf/weight_gather_s": gathered - start, "perf/weight_load_s": slowest_load}

    def build_channel(self) -> list[int]:
        """The broadcast group over trainer rank 0 and the current workers (cluster/broadcast.py).

        Returns the workers that could not join (found dead: they are replaced, and the channel
        is left unbuilt for this sync). The members wait `join_timeout_s` for each other.
        """
        self.channel = None
        size = 1 + self.pool.size
        address = ray.get(self.trainer.actors[0].address.remote())
        timeouts = (self.join_timeout_s, self.timeout_s)
        joins = [self.trainer.actors[0].join_channel.remote(address, size, *timeouts)]
        joins += [w.join_channel.remote(address, i + 1, size, *timeouts) for i, w in enumerate(self.pool.workers)]
        dead, failed = [], False
        for member, ref in enumerate(joins):
            try:
                ray.get(ref)
            except RayActorError:
                dead.append(member - 1)  # a worker (a dead trainer rank stops the run at its next call)
            except RayTaskError as error:  # it gave up waiting for a member that is gone
                log.warning("member %d of the weight broadcast could not join: %s", member, error)
                failed = True
        for i in dead:
            self.pool.restart(i)  # restore(i): the object-store push and the check
        if not (dead or failed):
            self.channel = (tuple(self.pool.generations), self.bucket_bytes,
                            self.trainer.weight_layout(self.bucket_bytes))
        return dead

    def broadcast(self) -> dict[str, float]:
        """Step 1 by broadcast: every worker receives, then rank 0 sends; a worker that did not
        receive all of it is restarted and restored through the object store. When the channel
        cannot be built, this sync goes through the object store (the next one tries again)."""
        start = time.perf_counter()
        if self.channel is None or self.channel[:2] != (tuple(self.pool.generations), self.bucket_bytes):
            dead = self.build_channel()
            if self.channel is None:
                log.warning("the weight broadcast's channel could not be built; this sync goes through the "
                            "object store")
                return self.push_through_object_store() | {"cluster/broadcast_failures": float(len(dead))}
        layout = self.channel[2]
        built = time.perf_counter()
        receiving = [w.receive_weights.remote(layout) for w in self.pool.workers]
        try:
            self.trainer.send_weights(self.bucket_bytes, layout)
        except RayTaskError as error:  # rank 0's broadcast failed (a dead rank raises TrainerRankError)
            log.warning("weight broadcast failed on trainer rank 0: %s", error)
        loads, failed = [], []
        deadline = time.monotonic() + self.timeout_s
        for i, ref in enumerate(receiving):
            try:
                loads.append(ray.get(ref, timeout=max(0.0, deadline - time.monotonic())))
            except (RayActorError, RayTaskError, GetTimeoutError) as error:
                log.warning("rollout worker %d did not receive the weight broadcast (%s): it is replaced "
                            "and restored through the object store", i, type(error).__name__)
                failed.append(i)
        for i in failed:
            self.pool.restart(i)  # restore(i): the object-store push and the check, for it alone
        return {"perf/weight_channel_s": built - start, "perf/weight_load_s": max(loads, default=0.0),
                "cluster/broadcast_failures": float(len(failed))}

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
