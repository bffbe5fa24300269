"""Rollout actors and `EnginePool`, the `InferenceEngine` the driver's loop samples through.

Each `RolloutWorker` is a Ray actor holding one engine built by `make_engine` (transformers or
vLLM, `rollout.engine`) from the model directory. `EnginePool.generate` cuts the requests into
one contiguous chunk per worker, sends them all, and puts the completions back in request order;
`generate_stream` yields each worker's chunk as soon as it returns (the driver finalises those
trajectories and starts scoring them while the other workers still generate).

Faults. A worker that dies (`ray.exceptions.RayActorError`: killed, out of memory, its node
lost) is replaced by a new actor with a new sampling seed; `restore(index)` (set by `ClusterSync`)
pushes the trainer's current weights into it and runs the sync probe on it; then the dead
worker's chunk, and only that chunk, is issued again. A chunk's completions come back whole or
not at all, so no request is lost or answered twice. A worker that dies `MAX_RESTARTS` times in
one call stops the run with `ClusterError` (a fault that repeats, e.g. a model that does not fit).

A worker that hangs without dying (a deadlock, a wedged device) is found by the call timeout
(`cluster.call_timeout_s`): a call still running that long after it was sent counts as a death;
the actor is killed and replaced and its chunk issued again, as above (`cluster/rollout_hangs`).
The timeout must exceed the longest legitimate call (a whole rollout chunk at the longest
response length). Not covered: a lost driver (the run stops; `--resume` continues from the last
checkpoint, exactly: the workers' sampling generators are checkpointed, `PoolGenerators`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

import ray
import torch
from ray.exceptions import RayActorError

from longrl.cluster.errors import ClusterError
from longrl.types import Completion, GenerationRequest, SamplingParams

log = logging.getLogger(__name__)

MAX_RESTARTS = 3  # per worker and call; module docstring


def prepare_actor(threads: int) -> None:
    """An actor process's torch threads: `threads` when set, else 1 (torch's default of one
    thread per core oversubscribes a machine shared by N actors); no progress bars in its log."""
    import transformers

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(threads or 1)


class RolloutWorker:
    """One engine in one actor process. `engine_factory` replaces `make_engine` (tests inject faults)."""

    channel = None  # its end of the weight broadcast, when `cluster.sync_transport = "broadcast"`

    def __init__(self, model_path: str, config, seed: int, engine_factory: Callable | None = None):
        from longrl.device import resolve_device
        from longrl.models import load_policy
        from longrl.rollout.engine import make_engine

        prepare_actor(config.threads)
        model, tokenizer = load_policy(model_path, config.model.dtype)
        model = model.to(resolve_device(config.train.device))
        self.engine = (engine_factory or make_engine)(config.rollout, model, tokenizer, seed=seed)

    def pid(self) -> int:
        """This actor's process id (a sharded vLLM engine's workers are its children)."""
        return os.getpid()

    def pads_contexts(self) -> bool:
        return getattr(self.engine, "pads_contexts", True)

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[Completion]:
        return self.engine.generate(requests, params)

    def load_weights(self, buckets: Sequence[ray.ObjectRef]) -> float:
        """Load the weights bucket by bucket (each a list of (name, tensor)); returns seconds.

        The refs arrive unresolved (nested in a list), so only one bucket is in this process at
        a time beside the engine's own weights.
        """
        start = time.perf_counter()
        for ref in buckets:
            self.engine.load_weights(ray.get(ref))
        return time.perf_counter() - start

    def join_channel(self, address: str, member: int, size: int, join_timeout_s: float, timeout_s: float) -> None:
        """Join the weight broadcast's group as `member` (cluster/broadcast.py)."""
        from longrl.cluster.broadcast import Channel

        if self.channel is not None:
            self.channel.close()
            self.channel = None
        self.channel = Channel(address, member, size, join_timeout_s, timeout_s)

    def receive_weights(self, layout) -> float:
        """Load the weights trainer rank 0 broadcasts, bucket by bucket; returns seconds. A failure
        closes this end (the channel is built again before the next broadcast)."""
        start = time.perf_counter()
        try:
            for bucket in self.channel.receive(layout):
                self.engine.load_weights(bucket)
        except BaseException:
            self.channel.close()
            self.channel = None
            raise
        return time.perf_counter() - start

    def score(self, sequences: Sequence[list[int]], prompt_lens: Sequence[int],
              temperature: float = 1.0) -> list[list[float]]:
        return self.engine.score(sequences, prompt_lens, temperature)

    def sleep(self) -> None:
        self.engine.sleep()

    def wake(self) -> None:
        self.engine.wake()

    def generator_state(self) -> torch.Tensor | None:
        """The engine's sampling generator state (None for an engine without one: vLLM unless
        `rollout.vllm_request_seeds`)."""
        generator = getattr(self.engine, "generator", None)
        return None if generator is None else generator.get_state()

    def set_generator_state(self, state: torch.Tensor) -> None:
        self.engine.generator.set_state(state)


class PoolGenerators:
    """The sampling generators of every rollout worker, as one state: what `loop.save_checkpoint`
    saves as the engine's generator, so a resumed cluster run samples what the uninterrupted one
    would have (the saved states are the workers' current ones, replaced workers included)."""

    def __init__(self, pool: EnginePool):
        self.pool = pool

    def get_state(self) -> list[torch.Tensor]:
        return ray.get([w.generator_state.remote() for w in self.pool.workers])

    def set_state(self, states: list[torch.Tensor]) -> None:
        if len(states) != len(self.pool.workers):
            log.warning("the checkpoint holds the sampling state of %d rollout workers and this run has %d: "
                        "sampling continues with fresh randomness (the resume is not exact)",
                        len(states), len(self.pool.workers))
            return
        ray.get([w.set_generator_state.remote(s) for w, s in zip(self.pool.workers, states)])


def chunks(n: int, parts: int) -> list[range]:
    """`range(n)` cut into `parts` contiguous ranges whose sizes differ by at most one (some empty)."""
    size, extra = divmod(n, parts)
    out, at = [], 0
    for i in range(parts):
        step = size + (i < extra)
        out.append(range(at, at + step))
        at += step
    return out


class EnginePool:
    """An `InferenceEngine` over N rollout actors (module docstring).

    `spawn(index, generation)` creates the actor for slot `index`; `generation` counts its
    restarts (the worker's seed depends on it, so a replacement does not replay the dead one's
    draws). `restore(index)` brings a fresh actor to the trainer's current weights and checks it.
    """

    def __init__(self, spawn: Callable[[int, int], ray.actor.ActorHandle], size: int, call_timeout_s: float = 0.0):
        self.spawn, self.size, self.call_timeout_s = spawn, size, call_timeout_s
        self.generations = [0] * size
        self.workers = [spawn(i, 0) for i in range(size)]
        self.restore: Callable[[int], None] = lambda index: None
        self.pads_contexts = ray.get(self.workers[0].pads_contexts.remote())
        has_generator = ray.get(self.workers[0].generator_state.remote()) is not None
        self.generator = PoolGenerators(self) if has_generator else None
        self.restarts = self.reissued = self.hangs = 0  # since the last `take_fault_metrics`

    # -- faults ----------------------------------------------------------------------------------

    def restart(self, index: int) -> None:
        """Replace worker `index` by a new actor holding the current weights (checked)."""
        self.generations[index] += 1
        try:
            ray.kill(self.workers[index])
        except Exception:  # noqa: BLE001 - it is already gone
            pass
        self.workers[index] = self.spawn(index, self.generations[index])
        self.restore(index)
        self.restarts += 1

    def take_fault_metrics(self) -> dict[str, float]:
        """`cluster/rollout_restarts`, `cluster/reissued_requests`, `cluster/rollout_hangs` since the last call."""
        out = {"cluster/rollout_restarts": float(self.restarts), "cluster/reissued_requests": float(self.reissued),
               "cluster/rollout_hangs": float(self.hangs)}
        self.restarts = self.reissued = self.hangs = 0
        return out

    def _stream(self, submit: Callable[[int, range], ray.ObjectRef], parts: list[range], what: str):
        """Run `submit(worker, part)` for every non-empty part and yield `(part index, result)` as
        each returns; on a dead or hung worker restart it and submit its part again."""
        pending: dict[ray.ObjectRef, tuple[int, float]] = {}  # ref -> (part index, sent at)

        def send(i: int) -> None:
            pending[submit(i, parts[i])] = (i, time.monotonic())

        for i, part in enumerate(parts):
            if len(part):
                send(i)
        deaths = [0] * len(parts)
        while pending:
            wait = None
            if self.call_timeout_s > 0:
                wait = max(0.0, min(sent for _, sent in pending.values()) + self.call_timeout_s - time.monotonic())
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=wait)
            if ready:
                (ref,) = ready
                i, _ = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except RayActorError as exc:
                    cause = type(exc).__name__
                else:
                    yield i, result
                    continue
            else:  # the oldest call outlived the timeout: the worker is hung
                ref = min(pending, key=lambda r: pending[r][1])
                i, _ = pending.pop(ref)
                cause = f"no answer in {self.call_timeout_s:g} s (cluster.call_timeout_s)"
                self.hangs += 1
            deaths[i] += 1
            if deaths[i] > MAX_RESTARTS:
                raise ClusterError(f"rollout worker {i} failed {deaths[i]} times during one {what} call "
                                   f"(last: {cause}); the fault repeats: see its log under "
                                   "/tmp/ray/session_latest/logs")
            self.restart(i)
            self.reissued += len(parts[i])
            send(i)

    def _gather(self, submit: Callable[[int, range], ray.ObjectRef], parts: list[range], what: str) -> list:
        """`_stream`'s results in part order (None for an empty part)."""
        results: list = [None] * len(parts)
        for i, result in self._stream(submit, parts, what):
            results[i] = result
        return results

    # -- the InferenceEngine protocol ---------------------------------------------------------------

    def generate_stream(self, requests: Sequence[GenerationRequest],
                        params: SamplingParams) -> Iterator[tuple[range, list[Completion]]]:
        """`(request indices, their completions)` for each worker's chunk, as soon as that worker
        returns; every request comes back exactly once (faults as in the module docstring)."""
        parts = chunks(len(requests), self.size)
        params_ref = ray.put(params)
        for i, completions in self._stream(lambda i, part: self.workers[i].generate.remote(
                [requests[j] for j in part], params_ref), parts, "generate"):
            yield parts[i], completions

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[Completion]:
        out: list = [None] * len(requests)
        for indices, completions in self.generate_stream(requests, params):
            for j, completion in zip(indices, completions):
                out[j] = completion
        return out

    def score(self, sequences: Sequence[list[int]], prompt_lens: Sequence[int],
              temperature: float = 1.0) -> list[list[float]]:
        parts = chunks(len(sequences), self.size)
        out = self._gather(lambda i, part: self.workers[i].score.remote(
            [sequences[j] for j in part], [prompt_lens[j] for j in part], temperature), parts, "score")
        return [lp for part in out if part for lp in part]

    def score_each(self, sequences: Sequence[list[int]], prompt_lens: Sequence[int],
                   temperature: float = 1.0) -> list[list[list[float]]]:
        """Every worker scores all of `sequences` (the sync probe); one list per worker."""
        whole = [range(len(sequences))] * self.size
        return self._gather(lambda i, _: self.workers[i].score.remote(
            list(sequences), list(prompt_lens), temperature), whole, "sync check")

    def push(self, index: int, buckets: list[ray.ObjectRef]) -> ray.ObjectRef:
        """Send the weight buckets to worker `index` (one call; `load_weights_refs` sends to all)."""
        return self.workers[index].load_weights.remote(buckets)

    def load_weights_refs(self, buckets: list[ray.ObjectRef]) -> float:
        """Every worker loads the buckets, in parallel; the slowest worker's seconds."""
        whole = [range(1)] * self.size
        return max(self._gather(lambda i, _: self.push(i, buckets), whole, "load_weights"))

    def load_weights(self, state: Iterable[tuple[str, torch.Tensor]]) -> None:
        self.load_weights_refs([ray.put([(n, t.detach().cpu()) for n, t in state])])

    def sleep(self) -> None:
        self._gather(lambda i, _: self.workers[i].sleep.remote(), [range(1)] * self.size, "sleep")

    def wake(self) -> None:
        self._gather(lambda i, _: self.workers[i].wake.remote(), [range(1)] * self.size, "wake")

    def shutdown(self) -> None:
        for worker in self.workers:
            ray.kill(worker)
