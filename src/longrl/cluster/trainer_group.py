"""The trainer as a group of ranks: one Ray actor per rank, one torch.distributed group.

`TrainerGroup` has the public methods the loop calls on a `Trainer` (`train_iteration`,
`current_logprobs`, `save_pretrained`, `save_state`/`load_state`, `rng`) plus what the weight
sync needs (`weight_buckets`, `probe_logprobs`). Every call goes to every rank with the same
arguments (sent once through the object store) and returns rank 0's result: the FSDP2 trainer
(`longrl.distributed`) requires every public method on all ranks, since each holds a shard and
the calls run collectives.

The group's rendezvous is `tcp://<rank 0's node>:<a free port there>`, found by asking the rank-0
actor, so ranks on several nodes meet where rank 0 listens. Backend `auto`: NCCL where the rank
sees a GPU, gloo on CPU.

Faults: a rank that dies stops the run: the other ranks would wait in their next collective
forever. `_broadcast` waits on all ranks at once and raises `TrainerRankError` naming the first
rank found dead; the run continues from its last checkpoint with `longrl train --resume RUN_DIR`.
"""

from __future__ import annotations

import inspect
import random
import socket
from collections.abc import Sequence
from pathlib import Path

import ray
import torch
from ray.exceptions import RayActorError

from longrl.cluster.errors import ClusterError, TrainerRankError
from longrl.cluster.pool import prepare_actor


def buckets_of(state: dict[str, torch.Tensor], bucket_bytes: int) -> list[list[tuple[str, torch.Tensor]]]:
    """(name, tensor) pairs in order, cut into lists of about `bucket_bytes` each (a tensor
    larger than that is a bucket alone)."""
    out: list[list[tuple[str, torch.Tensor]]] = [[]]
    size = 0
    for name, tensor in state.items():
        n = tensor.numel() * tensor.element_size()
        if out[-1] and size + n > bucket_bytes:
            out.append([])
            size = 0
        out[-1].append((name, tensor))
        size += n
    return out if out[-1] else []


class TrainerRank:
    """One rank of the trainer group: a `Trainer` over this rank's shard."""

    def address(self) -> str:
        """`host:port` where this actor could listen (asked of rank 0 for the rendezvous)."""
        host = ray.util.get_node_ip_address()
        with socket.socket() as s:
            s.bind(("", 0))
            return f"{host}:{s.getsockname()[1]}"

    def setup(self, rank: int, world_size: int, init_method: str, model_path: str, config) -> None:
        from longrl.device import resolve_device
        from longrl.models import load_policy
        from longrl.trainer import Trainer

        prepare_actor(config.threads)
        random.seed(config.seed)
        torch.manual_seed(config.seed)
        self.rank, self.config = rank, config
        distributed = _init_group(config.cluster.backend, rank, world_size, init_method)
        model, self.tokenizer = load_policy(model_path, config.model.dtype)
        extra = {"distributed": True, "cpu_offload": config.cluster.cpu_offload} if distributed else {}
        self.trainer = Trainer(model, config.train, config.loss, self.tokenizer.pad_token_id,
                               temperature=config.rollout.temperature, seed=config.seed,
                               device=resolve_device(config.train.device), dtype=config.model.dtype, **extra)
        self.max_positions = getattr(model.config, "max_position_embeddings", None)

    def max_position_embeddings(self) -> int | None:
        return self.max_positions

    def train_iteration(self, trajectories, response_weights=None) -> dict[str, float]:
        return self.trainer.train_iteration(trajectories, response_weights)

    def current_logprobs(self, trajectories) -> list[torch.Tensor]:
        return self.trainer.current_logprobs(trajectories)

    def full_state(self) -> dict[str, torch.Tensor]:
        """The full parameters as CPU tensors under their parameter names (tied weights once, as
        `HFEngine.load_weights` and the single-process sync push them)."""
        names = [name for name, _ in self.trainer.model.named_parameters()]
        if hasattr(self.trainer, "full_state_dict"):  # FSDP2: a collective, on every rank
            full = self.trainer.full_state_dict()
            return {name: full[name] for name in names if name in full}
        return {name: p.detach().cpu() for name, p in self.trainer.model.named_parameters()}

    def weight_buckets(self, bucket_bytes: int) -> list[ray.ObjectRef] | None:
        """Rank 0: the full weights put into the object store in buckets; other ranks: None."""
        state = self.full_state()
        if self.rank != 0:
            return None
        return [ray.put(bucket) for bucket in buckets_of(state, bucket_bytes)]

    def probe_logprobs(self, ids: list[int], prompt_len: int) -> list[float]:
        """The trainer's log-probs of the probe's answer tokens, at its sampling temperature.

        Through `current_logprobs`: under FSDP2 the forward must enter at the sharded root (its
        hooks gather the shards), which `current_logprobs` does on every rank.
        """
        from longrl.types import Prompt, Segment, Trajectory

        answer = ids[prompt_len:]
        probe = Trajectory(Prompt("weight-sync-probe", ""), 0, ids[:prompt_len],
                           [Segment(answer, [0.0] * len(answer), -1)])
        return self.trainer.current_logprobs([probe])[0].float().tolist()

    def save_pretrained(self, path: str) -> None:
        if hasattr(self.trainer, "save_pretrained"):  # every rank gathers; rank 0 writes
            self.trainer.save_pretrained(path)  # the driver writes the tokenizer
        elif self.rank == 0:
            self.trainer.model.save_pretrained(path)

    def save_state(self, path: str) -> None:
        """Optimizer state (and, with FSDP2, the sharded weights) under `path`."""
        if hasattr(self.trainer, "save_state"):
            self.trainer.save_state(path)
        elif self.rank == 0:
            Path(path).mkdir(parents=True, exist_ok=True)
            torch.save(self.trainer.optimizer.state_dict(), Path(path) / "optimizer.pt")

    def load_state(self, path: str) -> None:
        if hasattr(self.trainer, "load_state"):
            self.trainer.load_state(path)
        else:
            self.trainer.optimizer.load_state_dict(torch.load(Path(path) / "optimizer.pt", weights_only=False))

    def rng_state(self):
        return self.trainer.rng.getstate()

    def set_rng_state(self, state) -> None:
        self.trainer.rng.setstate(state)


def _init_group(backend: str, rank: int, world_size: int, init_method: str) -> bool:
    """Join the torch.distributed group through `longrl.distributed`; False when that module
    (the FSDP2 trainer) is not there, which only one rank can do without."""
    from longrl import trainer as trainer_module

    try:
        from longrl.distributed import init_group
    except ImportError:
        if world_size > 1:
            raise ClusterError(f"cluster.trainer_ranks = {world_size} needs the FSDP2 trainer "
                               "(longrl.distributed), which this install lacks: set cluster.trainer_ranks=1")
        return False
    if "distributed" not in inspect.signature(trainer_module.Trainer).parameters:
        if world_size > 1:
            raise ClusterError(f"cluster.trainer_ranks = {world_size}: this Trainer cannot shard; "
                               "set cluster.trainer_ranks=1")
        return False
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    init_group(backend, rank, world_size, init_method)
    return True


class _GroupRng:
    """`TrainerGroup.rng`: the ranks' shuffling RNG (identical on every rank), as `random.Random`'s
    getstate/setstate for checkpoints."""

    def __init__(self, group: TrainerGroup):
        self.group = group

    def getstate(self):
        return self.group._broadcast("rng_state")

    def setstate(self, state) -> None:
        self.group._broadcast("set_rng_state", state)


class TrainerGroup:
    """N trainer ranks behind the `Trainer` methods the loop calls (module docstring)."""

    def __init__(self, actors: Sequence[ray.actor.ActorHandle], model_path: str, config):
        self.actors = list(actors)
        init_method = f"tcp://{ray.get(self.actors[0].address.remote())}"
        self._broadcast_each("setup", [(r, len(self.actors), init_method, model_path, config)
                                       for r in range(len(self.actors))])
        self.rng = _GroupRng(self)

    def _wait(self, refs: list[ray.ObjectRef], method: str) -> list:
        """Every rank's result; a dead rank raises `TrainerRankError` as soon as it is seen."""
        remaining = list(refs)
        while remaining:
            done, remaining = ray.wait(remaining, num_returns=1)
            try:
                ray.get(done[0])
            except RayActorError as exc:
                rank = refs.index(done[0])
                raise TrainerRankError(
                    f"trainer rank {rank} of {len(refs)} died during {method}: the group cannot go on "
                    "without it; continue from the last checkpoint with `longrl train --resume RUN_DIR` "
                    "(the actor's log is under /tmp/ray/session_latest/logs)") from exc
        return ray.get(refs)

    def _broadcast_each(self, method: str, args: list[tuple]) -> list:
        return self._wait([getattr(a, method).remote(*a_args) for a, a_args in zip(self.actors, args)], method)

    def _broadcast(self, method: str, *args):
        """Call `method(*args)` on every rank; rank 0's result. Large arguments travel once."""
        refs = [ray.put(a) if isinstance(a, (list, tuple, dict)) else a for a in args]
        return self._wait([getattr(actor, method).remote(*refs) for actor in self.actors], method)[0]

    def train_iteration(self, trajectories, response_weights=None) -> dict[str, float]:
        return self._broadcast("train_iteration", list(trajectories), response_weights)

    def current_logprobs(self, trajectories) -> list[torch.Tensor]:
        return self._broadcast("current_logprobs", list(trajectories))

    def weight_buckets(self, bucket_bytes: int) -> list[ray.ObjectRef]:
        return self._broadcast("weight_buckets", bucket_bytes)

    def probe_logprobs(self, ids: list[int], prompt_len: int) -> list[float]:
        return self._broadcast("probe_logprobs", ids, prompt_len)

    def max_position_embeddings(self) -> int | None:
        return ray.get(self.actors[0].max_position_embeddings.remote())

    def save_pretrained(self, path, tokenizer) -> None:
        """The policy as a Hugging Face directory, written by rank 0 (a filesystem the driver shares)."""
        self._broadcast("save_pretrained", str(path))
        tokenizer.save_pretrained(path)

    def save_state(self, path) -> None:
        self._broadcast("save_state", str(path))

    def load_state(self, path) -> None:
        self._broadcast("load_state", str(path))

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
