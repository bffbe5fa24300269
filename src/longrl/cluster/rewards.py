"""Reward actors: the run's rewards scored in parallel chunks, through `score_batch` in each actor.

`remote_rewards` returns a mapping shaped like `build_rewards`'s (name -> (reward, weight)), so
the driver's `rewards.score.score` and `evaluate` run unchanged. Each entry's reward cuts the
batch into one chunk per `RewardWorker`, sends all chunks at once, and gathers them in order.
A worker builds the rewards from the run's `[reward]` section itself and scores its chunk with
`score_batch` restricted to that one reward, so error handling (a failing item is a recorded
zero with its reason) and info keys are exactly those of a single process.

Faults: a worker that dies while scoring, or does not answer within `cluster.call_timeout_s`
(hung), is replaced and its chunk scored again, once; a second failure of the same chunk stops the
run with `ClusterError` (a response that kills its scorer, e.g. code run outside the sandbox,
would otherwise kill every replacement too).

Scoring overlaps generation: `prefetch(prompts, responses)` submits a batch's chunks at once and
keeps their futures, keyed by (prompt object, response); the loop calls it for each rollout
worker's finished trajectories as that worker returns (`rollout/sample.py`'s `on_finished`). A
later call takes its prefetched items' futures and submits only the rest, so each item is scored
once. Futures of items not asked for within `KEEP_CALLS` calls (a group dropped by age or for room)
are let go; should such an item be asked for after all, it is scored afresh.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import ray
from ray.exceptions import RayActorError

from longrl.cluster.errors import ClusterError
from longrl.cluster.pool import chunks, prepare_actor
from longrl.types import Prompt, RewardResult

KEEP_CALLS = 16  # calls a prefetched future is held for (module docstring)


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


@dataclass(eq=False)
class _Chunk:
    """One submitted scoring call: its items, the actor it went to, and (once back) its results."""

    worker: int
    actor: ray.actor.ActorHandle | None
    prompts: list[Prompt]
    responses: list[str]
    ref: ray.ObjectRef | None
    results: list[RewardResult] | None = None
    retried: bool = False
    sent_at: float = 0.0


class RewardPool:
    """N reward actors; `score(name, prompts, responses)` spreads one batch over them."""

    def __init__(self, spawn: Callable[[int], ray.actor.ActorHandle], size: int, call_timeout_s: float = 0.0):
        self.spawn, self.size, self.call_timeout_s = spawn, size, call_timeout_s
        self.workers = [spawn(i) for i in range(size)]
        self.restarts = self.hangs = 0  # since the last `take_fault_metrics`
        self.items = self.prefetched = 0  # items scored by `RemoteReward` calls, and how many prefetched

    def score(self, name: str, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[RewardResult]:
        parts = self.submit(name, prompts, responses)
        self.resolve(name, parts)
        return [r for part in parts for r in part.results]

    def submit(self, name: str, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[_Chunk]:
        """One chunk per worker, sent now; `resolve` collects them."""
        parts = [p for p in chunks(len(prompts), self.size) if len(p)]
        return [self._send(name, _Chunk(i, None, [prompts[j] for j in part], [responses[j] for j in part], None))
                for i, part in enumerate(parts)]

    def _send(self, name: str, chunk: _Chunk) -> _Chunk:
        chunk.actor = self.workers[chunk.worker]
        chunk.ref = chunk.actor.score.remote(name, chunk.prompts, chunk.responses)
        chunk.sent_at = time.monotonic()
        return chunk

    def resolve(self, name: str, parts: Sequence[_Chunk]) -> None:
        """Fill every chunk's `results`; a chunk whose actor died or hung is sent again once."""
        pending = {c.ref: c for c in parts if c.results is None}
        while pending:
            wait = None
            if self.call_timeout_s > 0:
                wait = max(0.0, min(c.sent_at for c in pending.values()) + self.call_timeout_s - time.monotonic())
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=wait)
            if ready:
                chunk = pending.pop(ready[0])
                try:
                    chunk.results = ray.get(ready[0])
                    continue
                except RayActorError as exc:
                    cause = type(exc).__name__
            else:  # the oldest chunk outlived the timeout: its worker is hung
                chunk = pending.pop(min(pending, key=lambda r: pending[r].sent_at))
                cause = f"no answer in {self.call_timeout_s:g} s (cluster.call_timeout_s)"
                self.hangs += 1
            if chunk.retried:
                raise ClusterError(f"reward worker {chunk.worker} failed twice scoring the same "
                                   f"{len(chunk.prompts)} responses with reward {name!r} (last: {cause}); "
                                   "see its log under /tmp/ray/session_latest/logs")
            chunk.retried = True
            if self.workers[chunk.worker] is chunk.actor:  # not yet replaced for another chunk
                self._restart(chunk.worker)
            pending[self._send(name, chunk).ref] = chunk

    def _restart(self, index: int) -> None:
        try:
            ray.kill(self.workers[index])
        except Exception:  # noqa: BLE001 - it is already gone
            pass
        self.workers[index] = self.spawn(index)
        # started before its chunk is sent again, so the call timeout measures the call alone
        ray.get(self.workers[index].__ray_ready__.remote())
        self.restarts += 1

    def take_fault_metrics(self) -> dict[str, float]:
        """`cluster/reward_restarts`, and `cluster/scored_during_rollout`: the share of the items
        scored since the last call whose scoring was submitted during the rollout (evaluation
        items never are)."""
        out = {"cluster/reward_restarts": float(self.restarts), "cluster/reward_hangs": float(self.hangs),
               "cluster/scored_during_rollout": self.prefetched / max(self.items, 1)}
        self.restarts = self.hangs = self.items = self.prefetched = 0
        return out

    def shutdown(self) -> None:
        for worker in self.workers:
            ray.kill(worker)


class RemoteReward:
    """A `Reward` whose calls are scored by the reward pool, prefetched where they can be
    (module docstring)."""

    def __init__(self, pool: RewardPool, name: str):
        self.pool, self.name = pool, name
        # (id(prompt), response) -> [(prompt, chunk, position in chunk, call count when sent)]; the
        # prompt is kept so its id cannot be reused by another object while the entry lives
        self.held: dict[tuple[int, str], list[tuple[Prompt, _Chunk, int, int]]] = {}
        self.calls = 0

    def prefetch(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> None:
        """Submit these items now; a later call with them uses these futures."""
        for chunk in self.pool.submit(self.name, prompts, responses):
            for at, (prompt, response) in enumerate(zip(chunk.prompts, chunk.responses)):
                self.held.setdefault((id(prompt), response), []).append((prompt, chunk, at, self.calls))

    def _take(self, prompt: Prompt, response: str) -> tuple[_Chunk, int] | None:
        entries = self.held.get((id(prompt), response))
        if not entries:
            return None
        _, chunk, at, _ = entries.pop()
        if not entries:
            del self.held[(id(prompt), response)]
        return chunk, at

    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[RewardResult]:
        taken = [self._take(p, r) for p, r in zip(prompts, responses)]
        rest = [j for j, t in enumerate(taken) if t is None]
        fresh = self.pool.submit(self.name, [prompts[j] for j in rest], [responses[j] for j in rest])
        self.pool.resolve(self.name, list({id(c): c for c, _ in filter(None, taken)}.values()) + fresh)
        self.pool.items += len(prompts)
        self.pool.prefetched += len(prompts) - len(rest)
        fresh_results = iter([r for chunk in fresh for r in chunk.results])
        self.calls += 1
        self._let_go()
        return [t[0].results[t[1]] if t else next(fresh_results) for t in taken]

    def _let_go(self) -> None:
        """Drop the futures not asked for within the last `KEEP_CALLS` calls (module docstring)."""
        for key in list(self.held):
            self.held[key] = [e for e in self.held[key] if self.calls - e[3] < KEEP_CALLS]
            if not self.held[key]:
                del self.held[key]


def remote_rewards(pool: RewardPool, reward_config) -> dict[str, tuple[RemoteReward, float]]:
    """name -> (remote reward, weight), in the `[reward]` section's order, as `build_rewards`."""
    return {name: (RemoteReward(pool, name), weight)
            for name, weight in zip(reward_config.names, reward_config.weights)}
