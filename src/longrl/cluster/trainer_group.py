"""The trainer as a group of ranks: one Ray actor per rank, one torch.distributed group.

`TrainerGroup` has the public methods the loop calls on a `Trainer` (`train_iteration`,
`current_logprobs`, `save_pretrained`, `save_state`/`load_state`, `rng`) plus what the weight
sync needs (`weight_buckets`, `probe_logprobs`). Each rank holds a `Trainer(distributed=True)`
(`longrl.distributed`; one rank is a plain trainer). Every call goes to every rank with the same
arguments (sent once through the object store) and returns rank 0's result: the FSDP2 trainer
(`longrl.distributed`) requires every public method on all ranks, since each holds a shard and
the calls run collectives.

The group's rendezvous is `tcp://<rank 0's node>:<a free port there>`, found by asking the rank-0
actor, so ranks on several nodes meet where rank 0 listens. Backend `auto`: NCCL where the rank
sees a GPU, gloo on CPU (`cluster.backend`).

Faults: a rank that dies stops the run: the other ranks would wait in their next collective
forever. `_broadcast` waits on all ranks at once and raises `TrainerRankError` naming the first
rank found dead; the run continues from its last checkpoint with `longrl train --resume RUN_DIR`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import ray
import torch
from ray.exceptions import RayActorError

from longrl.cluster.broadcast import Channel, Layout, free_address, layout_of
from longrl.cluster.errors import TrainerRankError
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

    channel: Channel | None = None  # rank 0's end of the weight broadcast (cluster/broadcast.py)

    def address(self) -> str:
        """`host:port` where this actor could listen (asked of rank 0 for the rendezvous)."""
        return free_address()

    def setup(self, rank: int, world_size: int, init_method: str, model_path: str, config) -> None:
        from longrl.device import resolve_device
        from longrl.distributed import init_group
        from longrl.lora import with_lora
        from longrl.models import load_policy
        from longrl.trainer import Trainer

        prepare_actor(config.threads)
        random.seed(config.seed)
        torch.manual_seed(config.seed)
        self.rank = rank
        init_group(config.cluster.backend, rank, world_size, init_method)
        model, tokenizer = load_policy(model_path, config.model.dtype)
        # the engines' weights: the plain model's parameters (tied weights once), whatever the
        # trainer holds (with LoRA, `full_state_dict` merges the adapters back into these names)
        self.shapes = {name: (p.shape, p.dtype) for name, p in model.named_parameters()}
        self.max_positions = getattr(model.config, "max_position_embeddings", None)
        model = with_lora(model, config.model)  # as in one process; the FSDP2 units hold the adapters
        self.trainer = Trainer(model, config.train, config.loss, tokenizer.pad_token_id,
                               temperature=config.rollout.temperature, seed=config.seed,
                               device=resolve_device(config.train.device), dtype=config.model.dtype,
                               distributed=True, cpu_offload=config.cluster.cpu_offload)

    def max_position_embeddings(self) -> int | None:
        return self.max_positions

    def train_iteration(self, trajectories, response_weights=None) -> dict[str, float]:
        return self.trainer.train_iteration(trajectories, response_weights)

    def current_logprobs(self, trajectories) -> list[torch.Tensor]:
        return self.trainer.current_logprobs(trajectories)

    def engine_buckets(self, bucket_bytes: int) -> list[list[tuple[str, torch.Tensor]]] | None:
        """Rank 0: the full parameters in buckets, under the plain model's parameter names (tied
        weights once, as the one-process sync pushes them); other ranks take part in the gather
        and return None."""
        full = self.trainer.full_state_dict()  # a collective: every rank; full tensors on rank 0
        if self.rank != 0:
            return None
        return buckets_of({name: full[name] for name in self.shapes}, bucket_bytes)

    def weight_buckets(self, bucket_bytes: int) -> list[ray.ObjectRef] | None:
        """Rank 0: `engine_buckets` put into the object store; other ranks return None."""
        buckets = self.engine_buckets(bucket_bytes)
        return None if buckets is None else [ray.put(bucket) for bucket in buckets]

    def join_channel(self, address: str, size: int, join_timeout_s: float, timeout_s: float) -> None:
        """Rank 0: host the weight broadcast's group as its member 0 (cluster/broadcast.py)."""
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        self.channel = Channel(address, 0, size, join_timeout_s, timeout_s)

    def weight_layout(self, bucket_bytes: int) -> Layout:
        """The buckets `send_weights` will broadcast, as names, shapes and dtypes (of the plain
        model, read before sharding: no gather)."""
        meta = {name: torch.empty(shape, dtype=dtype, device="meta") for name, (shape, dtype) in self.shapes.items()}
        return layout_of(buckets_of(meta, bucket_bytes))

    def send_weights(self, bucket_bytes: int, layout: Layout) -> None:
        """Every rank gathers the full parameters; rank 0 broadcasts them bucket by bucket to the
        rollout workers. A failure closes rank 0's end, so the workers stop waiting at once."""
        buckets = self.engine_buckets(bucket_bytes)
        if buckets is None:
            return
        try:
            self.channel.send(buckets, layout)
        except BaseException:
            self.channel.close()
            self.channel = None
            raise

    @torch.no_grad()
    def probe_logprobs(self, ids: list[int], prompt_len: int) -> list[float]:
        """The trainer's temperature-1 log-probs of the probe's answer tokens (`weight_sync`)."""
        ids_t = torch.tensor([ids])  # [1, T]
        positions = torch.arange(len(ids))[None]  # [1, T]
        return self.trainer.token_logprobs(ids_t, positions, 1.0)[0, prompt_len:].tolist()

    def save_pretrained(self, path: str) -> None:
        self.trainer.save_pretrained(path)  # every rank gathers, rank 0 writes; the driver adds the tokenizer

    def save_state(self, path: str) -> None:
        self.trainer.save_state(path)

    def load_state(self, path: str) -> None:
        self.trainer.load_state(path)

    def rng_state(self):
        return self.trainer.rng.getstate()

    def set_rng_state(self, state) -> None:
        self.trainer.rng.setstate(state)


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

    def weight_layout(self, bucket_bytes: int) -> Layout:
        return ray.get(self.actors[0].weight_layout.remote(bucket_bytes))

    def send_weights(self, bucket_bytes: int, layout: Layout) -> None:
        self._broadcast("send_weights", bucket_bytes, layout)

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
