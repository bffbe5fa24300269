"""Benchmark: the cluster's weight sync and one cluster iteration, each against a one-process baseline.

1. Sync. A random Qwen2 of `--hidden`/`--layers` (float32) is served by a local Ray cluster of
   `--ranks` trainer ranks and `--workers` rollout workers. For each transport (`--transports`:
   `object_store`, trainer rank 0 puts the buckets into Ray's object store and every worker
   fetches them; `broadcast`, one gloo broadcast per bucket from rank 0 to every worker) and
   each bucket size it times, best of `--repeat`, `ClusterSync` (gather the full weights on the
   trainer, move them to every worker, which loads them, then the probe check on every engine),
   split into its parts, against the baseline: `dst.copy_(src)` of the same parameters in this
   process (the least any sync can do: move the bytes once). Both transports run on the same
   actors, one after the other, in the same process.
2. Iteration. `loop.iteration` on the tiny world (configs/default.toml's settings, a random tiny
   model, `--iterations` iterations after one warm-up iteration), median seconds, in one process
   and then with `cluster.enabled` on the same machine.

Not a test: timings depend on the machine and its load; on CPU the actors share the cores with
each other, so the cluster is expected to be slower here (the point on CPU is correctness).

    OMP_NUM_THREADS=1 python benchmarks/cluster_sync.py [--hidden 512 --layers 8 --ranks 1 --workers 2]
        [--transports object_store broadcast] [--only sync]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def sync_figures(args) -> None:
    import ray
    import torch

    from longrl.cluster import setup_cluster
    from longrl.config import RunConfig, TinyModelConfig, load_config
    from longrl.models import load_policy, load_tokenizer
    from longrl.tiny import save_tiny_model

    path = save_tiny_model(TinyModelConfig(hidden_size=args.hidden, num_layers=args.layers,
                                           intermediate_size=4 * args.hidden), tempfile.mkdtemp())
    model, _ = load_policy(path)
    params = dict(model.named_parameters())
    size_mb = sum(p.numel() * p.element_size() for p in params.values()) / 2**20
    copy = {n: p.detach().clone() for n, p in params.items()}

    def plain_copy():
        with torch.no_grad():
            for n, p in params.items():
                copy[n].copy_(p)

    baseline = best(plain_copy, args.repeat)
    print(f"model: {sum(p.numel() for p in params.values()) / 1e6:.1f}M params, {size_mb:.0f} MB float32; "
          f"{args.ranks} trainer rank(s), {args.workers} rollout workers")
    print(f"baseline  plain copy in one process: {baseline * 1e3:8.1f} ms")
    config = load_config(RunConfig, None, [f"model.path={path}", "threads=1", "cluster.enabled=true",
                                           f"cluster.trainer_ranks={args.ranks}",
                                           f"cluster.rollout_workers={args.workers}", "cluster.reward_workers=0"])
    cluster = setup_cluster(config, str(path), load_tokenizer(path))
    try:
        for mb in args.buckets:
            totals, alone = {}, {}
            for transport in args.transports:
                cluster.sync.transport, cluster.sync.bucket_bytes = transport, mb << 20
                if transport == "broadcast":
                    cluster.sync.build_channel()  # once per layout, outside the timing (as in a run)
                parts = []
                total = totals[transport] = best(lambda: parts.append(cluster.sync(0)), args.repeat)
                last = min(parts, key=lambda m: m["perf/weight_sync_s"] + m["perf/sync_check_s"])
                alone[transport] = min(m["perf/weight_sync_s"] for m in parts)
                move = (f"gather + put {last['perf/weight_gather_s'] * 1e3:.0f} ms, " if transport == "object_store"
                        else "gather + broadcast + load in one, ")
                print(f"{transport:12s} buckets of {mb:4d} MB: sync + check {total * 1e3:8.1f} ms = "
                      f"{total / baseline:6.1f}x the copy  ({move}slowest worker load "
                      f"{last['perf/weight_load_s'] * 1e3:.0f} ms, check {last['perf/sync_check_s'] * 1e3:.0f} ms, "
                      f"probe diff {last['sync/probe_max_diff']:.1e})")
            if len(totals) == 2:
                print(f"{'':12s} buckets of {mb:4d} MB: broadcast / object_store = "
                      f"{totals['broadcast'] / totals['object_store']:.2f}x with the check, "
                      f"{alone['broadcast'] / alone['object_store']:.2f}x for the sync alone "
                      f"({alone['broadcast'] * 1e3:.0f} vs {alone['object_store'] * 1e3:.0f} ms)")
    finally:
        cluster.close()
        if ray.is_initialized():
            ray.shutdown()


def iteration_seconds(overrides: list[str], iterations: int) -> tuple[float, float]:
    """(set-up seconds, median seconds per iteration) of `loop.iteration`."""
    from longrl import loop
    from longrl.config import RunConfig, load_config

    start = time.perf_counter()
    run = loop.setup(load_config(RunConfig, "configs/default.toml", overrides))
    setup_s = time.perf_counter() - start
    try:
        loop.iteration(run)  # warm-up
        times = []
        for _ in range(iterations):
            start = time.perf_counter()
            loop.iteration(run)
            times.append(time.perf_counter() - start)
    finally:
        loop.close(run)
    return setup_s, statistics.median(times)


def iteration_figures(args) -> None:
    from longrl.config import TinyModelConfig
    from longrl.tiny import save_tiny_model

    path = save_tiny_model(TinyModelConfig(), tempfile.mkdtemp())
    common = [f"model.path={path}", "threads=1", f"out_dir={tempfile.mkdtemp()}", "log_samples=0"]
    one_setup, one = iteration_seconds(common, args.iterations)
    print(f"one process: set-up {one_setup:5.1f} s, median iteration {one:6.2f} s")
    cluster = [*common, "cluster.enabled=true", f"cluster.trainer_ranks={args.ranks}",
               f"cluster.rollout_workers={args.workers}", "cluster.reward_workers=1", "cluster.num_cpus=4"]
    many_setup, many = iteration_seconds(cluster, args.iterations)
    print(f"cluster:     set-up {many_setup:5.1f} s, median iteration {many:6.2f} s = {many / one:.2f}x one process")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--ranks", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--buckets", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--transports", nargs="+", choices=["object_store", "broadcast"],
                        default=["object_store", "broadcast"])
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--only", choices=["sync", "iteration"], default=None)
    args = parser.parse_args()
    if args.only != "iteration":
        sync_figures(args)
    if args.only != "sync":
        iteration_figures(args)


if __name__ == "__main__":
    main()
