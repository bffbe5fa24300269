"""Benchmark: trainer -> engine weight-sync time against a plain memory copy, side by side.

For each model (a tiny random Qwen2, and SmolLM2-135M-Instruct, see benchmarks/_smollm2.py) it
times, best of `repeat`:
  - baseline: `dst.copy_(src)` of every trainer parameter into a preallocated copy of the state
    dict (the least any sync can do: move the bytes once);
  - `load_weights` into the HF engine and into the colocated vLLM engine (vLLM's in-place reload:
    name mapping, fusing q/k/v and gate/up, re-packing for its CPU GEMM, cache reset);
  - the whole `WeightSync` call with its probe check, for both engines;
and prints each as seconds and as a ratio to the baseline (goal for vLLM load_weights: <= 3x).
Each model runs in its own subprocess. Not a test: timings depend on the machine and its load.

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

from _isolated import measure_in_subprocess  # noqa: E402  (sibling module)
from rollout_speed import model_dir  # noqa: E402

MODELS = ["tiny", "smollm2"]


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


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

    out = {"model": name, "params_m": params / 1e6, "copy": best_of(repeat, plain_copy)}
    for kind in ("hf", "vllm"):
        engine = make_engine(RolloutConfig(engine=kind, batch_size=8), model, tok, seed=0)
        checked = WeightSync(model, engine, tok, tolerance=1e-3)
        out[f"{kind}_load"] = best_of(repeat, lambda e=engine: sync_weights(model, e))
        out[f"{kind}_checked"] = best_of(repeat, lambda c=checked: c(iteration=0))
        out[f"{kind}_probe_diff"] = checked(iteration=0)["sync/probe_max_diff"]
        del engine, checked
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
    print(f"{'model':<8} {'params':>7} {'copy s':>8} | {'HF load':>8} {'x':>6} {'+check':>8} | "
          f"{'vLLM load':>9} {'x':>6} {'+check':>8} {'x':>6} | probe diff HF / vLLM")
    for name in args.models:
        r = measure_in_subprocess(__file__, name, args.repeat)
        if r is None:
            continue
        c = r["copy"]
        print(f"{name:<8} {r['params_m']:>6.2f}M {c:>8.4f} | {r['hf_load']:>8.4f} {r['hf_load'] / c:>5.1f}x "
              f"{r['hf_checked']:>8.4f} | {r['vllm_load']:>9.4f} {r['vllm_load'] / c:>5.1f}x "
              f"{r['vllm_checked']:>8.4f} {r['vllm_checked'] / c:>5.1f}x | "
              f"{r['hf_probe_diff']:.1e} / {r['vllm_probe_diff']:.1e}")
    print("x = ratio to the plain copy measured in the same run; goal: vLLM load <= 3x "
          "(+check adds the probe forward passes on both sides)")


if __name__ == "__main__":
    main()
