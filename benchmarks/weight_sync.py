"""Benchmark: trainer -> engine weight-sync time against a plain memory copy, side by side.

For each model (a tiny random Qwen2, and SmolLM2-135M-Instruct, see benchmarks/_smollm2.py) it
times, best of `repeat`:
  - baseline: `dst.copy_(src)` of every trainer parameter into a preallocated copy of the state
    dict (the least any sync can do: move the bytes once);
  - `load_weights` into the HF engine and into two colocated vLLM engines: `vllm reload`, the
    default (vLLM's `reload_weights`, which rebuilds each layer and repacks it for the CPU GEMM,
    cache reset), and `vllm inplace` (`rollout.vllm_inplace_sync = true`: plain weights, the
    model's `load_weights` maps names and fuses q/k/v and gate/up into the existing tensors);
  - the whole `WeightSync` call with its probe check, for each engine;
and prints each as seconds and as a ratio to the baseline (goal for vLLM load_weights: <= 3x),
with the probe's log-prob gap after the push. Each model runs in its own subprocess; within it
the engines are timed in turns. Not a test: timings depend on the machine and its load.

    OMP_NUM_THREADS=1 python benchmarks/weight_sync.py [--models tiny smollm2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _isolated import measure_in_subprocess
from rollout_speed import model_dir

MODELS = ["tiny", "smollm2"]


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(name: str, repeat: int) -> dict:
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from longrl.config import RolloutConfig
    from longrl.models import load_policy
    from longrl.rollout.engine import make_engine
    from longrl.weight_sync import WeightSync, sync_weights

    model, tok = load_policy(model_dir(name))
    params = sum(p.numel() for p in model.parameters())
    copy = {n: p.detach().clone() for n, p in model.named_parameters()}

    def plain_copy():
        with torch.no_grad():
            for n, p in model.named_parameters():
                copy[n].copy_(p)

    engines = {kind: make_engine(RolloutConfig(engine=engine, batch_size=8, vllm_inplace_sync=inplace),
                                 model, tok, seed=0)
               for kind, engine, inplace in (("hf", "hf", False), ("vllm_reload", "vllm", False),
                                             ("vllm_inplace", "vllm", True))}
    checks = {kind: WeightSync(model, engine, tok, tolerance=1e-3) for kind, engine in engines.items()}
    times: dict[str, list[float]] = {}
    for _ in range(repeat):  # in turns, so that machine load falls on every variant alike
        times.setdefault("copy", []).append(seconds(plain_copy))
        for kind, engine in engines.items():
            times.setdefault(f"{kind}_load", []).append(seconds(lambda e=engine: sync_weights(model, e)))
            times.setdefault(f"{kind}_checked", []).append(seconds(lambda c=checks[kind]: c(iteration=0)))
    out = {"model": name, "params_m": params / 1e6, **{key: min(v) for key, v in times.items()}}
    with torch.no_grad():  # a real update, then one push each: the probe must follow it
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 1e-2)
    for kind in engines:
        out[f"{kind}_probe_diff"] = checks[kind](iteration=1)["sync/probe_max_diff"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(measure(args.one, args.repeat)), flush=True)
        return
    print(f"{'model':<8} {'params':>7} {'copy s':>7} | {'engine':<12} {'load s':>7} {'x copy':>6} "
          f"{'+check s':>8} {'x copy':>6} | probe diff")
    for name in args.models:
        r = measure_in_subprocess(__file__, name, args.repeat)
        if r is None:
            continue
        c = r["copy"]
        for i, kind in enumerate(("hf", "vllm_reload", "vllm_inplace")):
            head = f"{name:<8} {r['params_m']:>6.2f}M {c:>7.4f}" if i == 0 else " " * 24
            print(f"{head} | {kind.replace('_', ' '):<12} {r[f'{kind}_load']:>7.4f} {r[f'{kind}_load'] / c:>5.1f}x "
                  f"{r[f'{kind}_checked']:>8.4f} {r[f'{kind}_checked'] / c:>5.1f}x | {r[f'{kind}_probe_diff']:.1e}")
    print("x copy = ratio to the plain copy measured in the same run (best of --repeat each, in turns); "
          "goal: vLLM load <= 3x.\n+check adds the probe forward passes on both sides; probe diff = "
          "max log-prob gap after pushing perturbed weights")


if __name__ == "__main__":
    main()
