"""Does RL with partial rollouts learn as well as without? Both engines, same start, seed, iterations.

Per seed, four `longrl train` runs from the same SFT model, each in its own process (vLLM binds
process state), one after another: {hf, vllm} engine x partial rollouts {off, on}. Everything
else is the config given (default: configs/default.toml) plus the overrides, identical across
the four. With
partial rollouts on, each trajectory grows at most `--segment-tokens` per iteration, so most
reasoning responses (~20-40 tokens on the default world) span two or three iterations and are
trained on tokens sampled by older policies. The partial token budget (`--token-budget`, default
2 x prompts_per_iter x k x segment_tokens) leaves room for as many new prompts per iteration as
the full run draws, beside the continuations.

Printed per run: held-out pass@1 before RL (the start model) and after, the gain, trajectories
trained, response tokens sampled, mean eval response tokens, and wall time. The runs share the
machine with whatever else runs on it: compare wall times with care, learning is the point.

    OMP_NUM_THREADS=1 python benchmarks/partial_learning.py --model runs/sft/final \\
        [--config configs/default.toml] [--iterations 30] [--engines hf vllm] [--seeds 0 1] [k=v ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def run_one(name: str, args, engine: str, partial: bool, seed: int) -> dict[str, float]:
    overrides = [f"name={name}", f"out_dir={args.out_dir}", f"model.path={args.model}",
                 f"iterations={args.iterations}", f"seed={seed}", "threads=1", "eval.every=0",
                 "log_samples=0", f"rollout.engine={engine}", f"partial.enabled={str(partial).lower()}",
                 f"partial.segment_tokens={args.segment_tokens}", f"partial.token_budget={args.token_budget}",
                 *args.overrides]
    command = [sys.executable, "-m", "longrl.cli", "train", args.config, *overrides, "--no-progress"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{name} failed ({' '.join(command)}):\n{done.stderr[-3000:]}")
    rows = [json.loads(line) for line in (Path(args.out_dir) / name / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/pass@1" in r]
    steps = [r for r in rows if "rollout/trajectories" in r]
    sampled = sum(r.get("rollout/new_tokens", r["rollout/mean_tokens"] * r["rollout/trajectories"]) for r in steps)
    return {"before": evals[0]["eval/pass@1"], "after": evals[-1]["eval/pass@1"],
            "trained": sum(r["rollout/trajectories"] for r in steps), "sampled_tokens": sampled,
            "eval_tokens": evals[-1].get("eval/mean_tokens", float("nan")),
            "old_share": sum(r.get("train/old_token_share", 0.0) for r in steps) / max(len(steps), 1),
            "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the SFT model every run starts from")
    parser.add_argument("--config", default="configs/default.toml")
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--segment-tokens", type=int, default=16)
    parser.add_argument("--token-budget", type=int, default=8192, help="partial.token_budget (default: "
                        "2 x 32 prompts x 8 samples x 16 segment tokens)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--engines", nargs="+", default=["hf", "vllm"], choices=["hf", "vllm"])
    parser.add_argument("--out-dir", default="runs")
    parser.add_argument("overrides", nargs="*", help="section.key=value, applied to every run")
    args = parser.parse_intermixed_args()
    results = []
    for seed in args.seeds:
        for engine in args.engines:
            for partial in (False, True):
                name = f"partial_learn_{engine}_{'on' if partial else 'off'}_s{seed}"
                results.append((engine, partial, seed, run_one(name, args, engine, partial, seed)))
                print(f"{name}: {results[-1][3]}", flush=True)
    print(f"\n{args.iterations} iterations of {args.config} from {args.model}; partial: segment_tokens="
          f"{args.segment_tokens}, token_budget={args.token_budget}; overrides: {' '.join(args.overrides) or '-'}")
    print("| engine | partial | seed | pass@1 before | pass@1 after | gain (points) | trajectories trained | "
          "tokens sampled | old-policy token share (mean per iteration) | eval mean tokens | wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for engine, partial, seed, r in results:
        print(f"| {engine} | {'on' if partial else 'off'} | {seed} | {r['before']:.3f} | {r['after']:.3f} | "
              f"{100 * (r['after'] - r['before']):+.1f} | {r['trained']:.0f} | {r['sampled_tokens']:.0f} | "
              f"{r['old_share']:.2f} | {r['eval_tokens']:.1f} | {r['seconds']:.0f} |")


if __name__ == "__main__":
    main()
