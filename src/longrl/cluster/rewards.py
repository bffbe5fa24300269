"""Reward actors: the run's rewards scored in parallel chunks, through `score_batch` in each actor.

`remote_rewards` returns a mapping shaped like `build_rewards`'s (name -> (reward, weight)), so
the driver's `rewards.score.score` and `evaluate` run unchanged. Each entry's reward cuts the
batch into one chunk per `RewardWorker`, sends all chunks at once, and gathers them in order.
A worker builds the rewards from the run's `[reward]` section itself and scores its chunk with
`score_batch` restricted to that one reward, so error handling (a failing item is a recorded
zero with its reason) and info keys are exactly those of a single process.

Faults: a worker that dies while scoring is replaced and its chunk scored again, once; a second
death of the same chunk stops the run with `ClusterError` (a response that kills its scorer, e.g.
code run outside the sandbox, would otherwise kill every replacement too).

Deviation from the paper's layout: scoring starts when the rollout phase has returned, not as
each rollout worker finishes. A reward needs the `Prompt` (its reference answer or tests), and
the engine seam carries token ids only; `rollout/sample.py` decodes and scores whole batches.
The chunks of one batch do score in parallel (what a slow verifier or the sandbox needs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import ray
from ray.exceptions import RayActorError

from longrl.cluster.errors import ClusterError
from longrl.cluster.pool import chunks, prepare_actor
from longrl.types import Prompt, RewardResult


class RewardWorker:
    """The run's rewards, built in this actor from the `[reward]` section."""

    def __init__(self, reward_config, threads: int = 0):
        from longrl.rewards.registry import build_rewards

        prepare_actor(threads)
        self.rewards = build_rewards(reward_config)

    def score(self, name: str, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[RewardResult]:
        """Reward `name`'s own results (its score and info keys), as the driver's `score_batch`
        would get from calling it in process."""
        from longrl.rewards.score import score_batch

        reward, _ = self.rewards[name]
        totals = score_batch({name: (reward, 1.0)}, prompts, responses)
        prefix = f"{name}/"
        return [RewardResult(t.info[name], {k[len(prefix):]: v for k, v in t.info.items() if k.startswith(prefix)})
                for t in totals]


class RewardPool:
    """N reward actors; `score(name, prompts, responses)` spreads one batch over them."""

    def __init__(self, spawn: Callable[[int], ray.actor.ActorHandle], size: int):
        self.spawn, self.size = spawn, size
        self.workers = [spawn(i) for i in range(size)]
        self.restarts = 0  # since the last `take_fault_metrics`

    def score(self, name: str, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[RewardResult]:
        parts = [p for p in chunks(len(prompts), self.size) if len(p)]
        submit = lambda i, part: self.workers[i].score.remote(  # noqa: E731
            name, [prompts[j] for j in part], [responses[j] for j in part])
        pending = {submit(i, part): i for i, part in enumerate(parts)}
        results: list[list[RewardResult]] = [[] for _ in parts]
        retried: set[int] = set()
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(ref)
            try:
                results[i] = ray.get(ref)
            except RayActorError as exc:
                if i in retried:
                    raise ClusterError(f"reward worker {i} died twice scoring the same {len(parts[i])} "
                                       f"responses with reward {name!r}; see its log under "
                                       "/tmp/ray/session_latest/logs") from exc
                retried.add(i)
                self._restart(i)
                pending[submit(i, parts[i])] = i
        return [r for part in results for r in part]

    def _restart(self, index: int) -> None:
        try:
            ray.kill(self.workers[index])
        except Exception:  # noqa: BLE001 - it is already gone
            pass
        self.workers[index] = self.spawn(index)
        self.restarts += 1

    def take_fault_metrics(self) -> dict[str, float]:
        out = {"cluster/reward_restarts": float(self.restarts)}
        self.restarts = 0
        return out

    def shutdown(self) -> None:
        for worker in self.workers:
            ray.kill(worker)


class RemoteReward:
    """A `Reward` whose calls are scored by the reward pool (module docstring)."""

    def __init__(self, pool: RewardPool, name: str):
        self.pool, self.name = pool, name

    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[RewardResult]:
        return self.pool.score(self.name, list(prompts), list(responses))


def remote_rewards(pool: RewardPool, reward_config) -> dict[str, tuple[RemoteReward, float]]:
    """name -> (remote reward, weight), in the `[reward]` section's order, as `build_rewards`."""
    return {name: (RemoteReward(pool, name), weight)
            for name, weight in zip(reward_config.names, reward_config.weights)}
