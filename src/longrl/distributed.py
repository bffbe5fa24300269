"""The trainer as a group of FSDP2 ranks: process group, small collectives, and sharding.

One process per rank (a Ray actor in `longrl.cluster`, or a `torch.multiprocessing` child in
the tests) calls `init_group`, then builds a `Trainer(distributed=True)`, which shards the policy
with `shard_model`. Without a group (or with a group of one) every helper here is the identity,
so the trainer's code reads the same in one process and in N.

Sharding (`shard_model`): each decoder layer is one FSDP2 unit (its parameters are all-gathered
just before its forward and freed after, re-gathered for backward), then the root unit takes
what is left: embeddings, final norm and LM head. Tied embeddings (the LM head's weight *is*
the embedding's) stay tied because both modules fall in the root unit, which shards the one
parameter once.

Gradient reduction: FSDP2 averages gradients over ranks by default. The trainer normalises
each rank's loss by the *global* number of sequences, so the gradient it wants is the plain sum
over ranks; `shard_model` sets every unit to a sum (divide factor 1, sum-only collectives, which
gloo also supports).

Shape legend: P parameters of a layer, W world size.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 600.0


def init_group(backend: str, rank: int, world_size: int, init_method: str,
               timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Join the default process group of the trainer ranks.

    `backend`: "gloo" (CPU), "nccl" (CUDA) or "auto" (nccl when CUDA is available, else gloo).
    `init_method`: where the ranks meet, e.g. "tcp://10.0.0.1:29500" or "file:///tmp/store".
    With nccl each process uses CUDA device $LOCAL_RANK (default: rank modulo the visible
    devices; a Ray actor sees only its own GPU, device 0).
    """
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"init_group: backend is {backend!r}; use 'gloo' (CPU), 'nccl' (CUDA) or 'auto'")
    if not 0 <= rank < world_size:
        raise ValueError(f"init_group: rank {rank} is outside 0 .. {world_size - 1} "
                         f"(world_size {world_size}); give each process its own rank in that range")
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise RuntimeError("init_group: backend 'nccl' needs CUDA, and torch finds no CUDA device "
                               "here; use backend 'gloo' (cluster.backend = \"gloo\") on CPU")
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank % torch.cuda.device_count())))
    try:
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout_s))
    except Exception as error:  # a timeout or refused connection: say which rank and where
        raise RuntimeError(
            f"init_group: rank {rank} of {world_size} could not join the {backend} group at "
            f"{init_method!r} within {timeout_s:.0f} s ({error}); check that every rank was started "
            "with the same init_method and world_size and that the address is reachable") from error


def is_distributed() -> bool:
    """True inside a process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Ranks in the group (1 without a group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _collective_device() -> torch.device:
    """Where small collective tensors live: the current CUDA device under nccl, else CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_reduce(values: dict[str, float], op) -> dict[str, float]:
    if not is_distributed():
        return dict(values)
    keys = sorted(values)  # the same order on every rank; every rank must pass the same keys
    flat = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(flat, op=op)
    return dict(zip(keys, flat.tolist()))


def all_reduce_sum(values: dict[str, float]) -> dict[str, float]:
    """Sum each value over the ranks (float64); every rank must pass the same keys."""
    return _all_reduce(values, dist.ReduceOp.SUM)


def all_reduce_max(values: dict[str, float]) -> dict[str, float]:
    """The largest of each value over the ranks; every rank must pass the same keys."""
    return _all_reduce(values, dist.ReduceOp.MAX)


def all_gather_objects(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (pickled; keep it small or on CPU)."""
    if not is_distributed():
        return [obj]
    out: list = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait for every rank (no-op without a group)."""
    if is_distributed():
        dist.barrier()


def decoder_layers(model) -> list[torch.nn.Module]:
    """The decoder layers of a Hugging Face causal LM (`model.model.layers` for Qwen2/Llama)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise ValueError(f"shard_model: cannot find the decoder layers of {type(model).__name__} "
                         "(expected model.get_decoder().layers); shard it by hand with fully_shard")
    return list(layers)


def shard_model(model: torch.nn.Module, mesh, mixed_precision: torch.dtype = torch.float32,
                cpu_offload: bool = False, root: torch.nn.Module | None = None) -> torch.nn.Module:
    """Shard `model` in place with FSDP2 over the 1-D `mesh`: each decoder layer, then the root.

    `mixed_precision`: the compute dtype; for bf16, parameters are all-gathered in bf16 and
    gradients reduced in float32 (the sharded masters stay float32); float32 needs no policy.
    `cpu_offload`: sharded parameters, gradients and optimizer state live in CPU memory and
    move to the device for each unit's forward/backward.
    `root`: the module whose forward the trainer calls (a wrapper holding `model`), sharded as
    the root unit; default `model`. Returns the root.
    """
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    policy = MixedPrecisionPolicy()
    if mixed_precision != torch.float32:
        policy = MixedPrecisionPolicy(param_dtype=mixed_precision, reduce_dtype=torch.float32)
    # pinned host memory needs CUDA; on a CPU mesh the offload is a plain CPU copy
    offload = CPUOffloadPolicy(pin_memory=torch.cuda.is_available()) if cpu_offload else OffloadPolicy()
    units = decoder_layers(model)
    root = model if root is None else root
    for layer in units:
        fully_shard(layer, mesh=mesh, mp_policy=policy, offload_policy=offload)
    fully_shard(root, mesh=mesh, mp_policy=policy, offload_policy=offload)
    for unit in [*units, root]:
        unit.set_gradient_divide_factor(1.0)  # sum over ranks: the loss is already globally normalised
        unit.set_force_sum_reduction_for_comms(True)  # no AVG / PREMUL_SUM ops, which gloo lacks
    return root
