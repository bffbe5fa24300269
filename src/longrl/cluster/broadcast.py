"""The weight sync's second transport: one torch.distributed broadcast from trainer rank 0 to
every rollout worker (`cluster.sync_transport = "broadcast"`; the default travels through Ray's
object store, `cluster/sync.py`).

The channel is a process group of its own, apart from the trainer ranks' FSDP2 group: member 0
is trainer rank 0, member i + 1 is rollout worker i. It is built from a TCP store that member 0
hosts (torch's `TCPStore` and a backend object, no `init_process_group`: a process can belong to
this group beside its default one), with gloo on CPU and NCCL on GPUs. Each bucket of weights
(`trainer_group.buckets_of`, about `cluster.sync_bucket_mb`) travels as one flat byte tensor;
every member knows the layout (names, shapes, dtypes per bucket) in advance, from the model's
parameters, so nothing but the bytes is sent. On GPUs the bytes move device to device (NCCL),
never through host memory; NCCL refuses two members on one GPU, so the broadcast needs trainer
rank 0 and the engines on different GPUs (`placement = "split"`, checked at load).

Faults (`ClusterSync` handles them): a member that fails mid-broadcast closes its end, so the
others fail at once instead of waiting out the timeout; every worker that did not receive the
whole broadcast is restarted and restored through the object store (its weights are checked),
and the channel is built again, over the new actors, at the next sync. A worker found dead while
the channel is built (the others give up after `sync.JOIN_TIMEOUT_S`) is replaced, and that sync
goes through the object store.
"""

from __future__ import annotations

import datetime
import math
import socket

import ray
import torch
import torch.distributed as dist

Layout = list[list[tuple[str, tuple[int, ...], torch.dtype]]]  # per bucket: (name, shape, dtype)


def free_address() -> str:
    """`host:port` where this process could listen: its Ray node's address and a free port."""
    host = ray.util.get_node_ip_address()
    with socket.socket() as s:
        s.bind(("", 0))
        return f"{host}:{s.getsockname()[1]}"


def layout_of(buckets: list[list[tuple[str, torch.Tensor]]]) -> Layout:
    return [[(name, tuple(t.shape), t.dtype) for name, t in bucket] for bucket in buckets]


ALIGN = 16  # every tensor starts at a multiple of this many bytes, so `unpack` can view it in place


def _padded(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def nbytes(bucket: list[tuple[str, tuple[int, ...], torch.dtype]]) -> int:
    return sum(_padded(math.prod(shape) * dtype.itemsize) for _, shape, dtype in bucket)


def pack(bucket: list[tuple[str, torch.Tensor]], device: torch.device) -> torch.Tensor:
    """The bucket's tensors, byte for byte (each padded to `ALIGN`), as one flat uint8 tensor on `device`."""
    flat = torch.zeros(nbytes(layout_of([bucket])[0]), dtype=torch.uint8)
    at = 0
    for _, t in bucket:
        n = t.numel() * t.element_size()
        flat[at:at + n] = t.detach().contiguous().reshape(-1).view(torch.uint8)
        at += _padded(n)
    return flat.to(device)


def unpack(flat: torch.Tensor, spec: list[tuple[str, tuple[int, ...], torch.dtype]]) -> list[tuple[str, torch.Tensor]]:
    """`pack`'s inverse: views of `flat` under the names, shapes and dtypes of `spec`."""
    out, at = [], 0
    for name, shape, dtype in spec:
        n = math.prod(shape) * dtype.itemsize
        out.append((name, flat[at:at + n].view(dtype).reshape(shape)))
        at += _padded(n)
    return out


class Channel:
    """This process's end of the broadcast group (module docstring)."""

    def __init__(self, address: str, member: int, size: int, join_timeout_s: float, timeout_s: float):
        """Join (waiting up to `join_timeout_s` for the other members); each broadcast then waits
        up to `timeout_s`."""
        host, port = address.rsplit(":", 1)
        timeout = datetime.timedelta(seconds=timeout_s)
        self.store = dist.TCPStore(host, int(port), size, member == 0,
                                   timeout=datetime.timedelta(seconds=join_timeout_s))
        prefix = dist.PrefixStore("longrl-weights", self.store)
        if torch.cuda.is_available():
            self.device = torch.device("cuda", torch.cuda.current_device())
            self.group = dist.ProcessGroupNCCL(prefix, member, size)
        else:
            self.device = torch.device("cpu")
            self.group = dist.ProcessGroupGloo(prefix, member, size, timeout)
        self.member = member

    def broadcast(self, flat: torch.Tensor) -> None:
        """Member 0 sends `flat`; every other member receives into it."""
        self.group.broadcast(flat, 0).wait()

    def send(self, buckets: list[list[tuple[str, torch.Tensor]]], layout: Layout) -> None:
        """Member 0: every bucket, in `layout`'s order (a mismatch with the layout is an error)."""
        if layout_of(buckets) != layout:
            raise RuntimeError("weight broadcast: the trainer's gathered weights differ from the layout the "
                               "engines expect (names, shapes or dtypes); the channel must be built again")
        for bucket in buckets:
            self.broadcast(pack(bucket, self.device))

    def receive(self, layout: Layout):
        """Every other member: each bucket as a list of (name, tensor), in turn."""
        for spec in layout:
            flat = torch.empty(nbytes(spec), dtype=torch.uint8, device=self.device)
            self.broadcast(flat)
            yield unpack(flat, spec)

    def close(self) -> None:
        """Drop this end; the other members' pending operations then fail at once."""
        self.group = self.store = None
