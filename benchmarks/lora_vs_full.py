"""Benchmark: LoRA against full fine-tuning, per RL iteration, on SmolLM2-135M-Instruct.

Both arms run the same command, configs/smollm2_math.toml at a small scale (`--iterations`
iterations of `--prompts` prompts x 4 samples, at most `--max-new-tokens` new tokens), one after
the other, each in a fresh process:

    full   every weight trains (AdamW state for 135M parameters)
    lora   model.lora_rank = --rank on the attention and MLP projections (peft); the engine gets
           merged weights after each iteration, and the sync check is the same

Prints, per arm, the median training seconds per iteration (`perf/train_s`, the first iteration
left out as warm-up), training tokens/s, whole-iteration seconds (rollout + training + sync), the
process's peak resident memory (`ru_maxrss` of that child alone: the colocated engine's copy of
the model is in both), the trainable parameters, and the lora/full ratios. Not a test: timings
depend on the machine and its load.

    OMP_NUM_THREADS=2 python benchmarks/lora_vs_full.py [--iterations 4] [--rank 16] [--set KEY=VALUE ...]

With the preset's settings, activations dominate the peak: the optimizer is reset every
iteration, so AdamW's state exists only during `step()`, after the activations are freed, and the
full arm's peak is activations plus gradients. `--set train.gradient_checkpointing=true` (and
`train.optimizer_reset=none`, which keeps AdamW's state) shows the weights' share.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _smollm2 import smollm2_dir  # noqa: E402

SOURCE = "reasoning_gym:chain_sum?size={n}&seed={seed}&min_terms=2&max_terms=2&min_digits=1&max_digits=1&system=none"


def run_arm(name: str, extra: list[str], args, model: Path, out: Path) -> dict[str, float]:
    command = [sys.executable, "-m", "longrl.cli", "train", str(ROOT / "configs/smollm2_math.toml"),
               f"model.path={model}", f"out_dir={out}", f"name={name}", f"iterations={args.iterations}",
               "checkpoint_every=0", f"rollout.prompts_per_iter={args.prompts}", "rollout.samples_per_prompt=4",
               f"rollout.max_new_tokens={args.max_new_tokens}", "eval.every=0", "eval.num_prompts=2",
               "eval.n_samples=2", "eval.max_new_tokens=8", f"data.train=['{SOURCE.format(n=200, seed=0)}']",
               f"data.eval=['{SOURCE.format(n=2, seed=100000)}']", f"threads={args.threads}", "--no-progress", *args.set, *extra]
    # glibc keeps freed heap pages, so a process's RSS would stay at its highest live size plus
    # whatever the allocator kept; mmap-ing every allocation over 64 kB returns them at once and
    # makes ru_maxrss the peak of live memory (the same setting for both arms)
    env = os.environ | {"MALLOC_MMAP_THRESHOLD_": "65536"}
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, env=env)
    _, status, usage = os.wait4(child.pid, 0)
    if status:
        raise SystemExit(f"{name}: `{' '.join(command)}` failed ({status})")
    rows = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "perf/train_s" in r][1:]  # the first iteration warms up
    median = lambda key: statistics.median(r[key] for r in steps)  # noqa: E731
    trainable = next((r["train/trainable_params"] for r in rows if "train/trainable_params" in r), float("nan"))
    return {"train_s": median("perf/train_s"), "train_tokens_per_s": median("perf/train_tokens_per_s"),
            "iteration_s": median("perf/iteration_s"), "peak_rss_gb": usage.ru_maxrss * 1024 / 1e9,
            "trainable_params": trainable}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 2)))
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides for both arms, e.g. train.gradient_checkpointing=true")
    args = parser.parse_args()
    model = smollm2_dir()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["full"] = run_arm("full", [], args, model, Path(tmp))
        results["lora"] = run_arm("lora", [f"model.lora_rank={args.rank}", f"model.lora_alpha={2 * args.rank}"],
                                  args, model, Path(tmp))
    print(f"SmolLM2-135M-Instruct, {args.iterations} iterations of {args.prompts * 4} responses "
          f"(<= {args.max_new_tokens} new tokens), {args.threads} threads, overrides {args.set or 'none'}; "
          "medians after the first iteration\n")
    print("| arm | train s / iteration | train tokens/s | iteration s | peak RSS (GB) | trainable params |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['train_s']:.2f} | {r['train_tokens_per_s']:.0f} | {r['iteration_s']:.2f} | "
              f"{r['peak_rss_gb']:.2f} | {r['trainable_params']:,.0f} |")
    full, lora = results["full"], results["lora"]
    print(f"| lora / full | {lora['train_s'] / full['train_s']:.2f}x | "
          f"{lora['train_tokens_per_s'] / full['train_tokens_per_s']:.2f}x | "
          f"{lora['iteration_s'] / full['iteration_s']:.2f}x | {lora['peak_rss_gb'] / full['peak_rss_gb']:.2f}x | "
          f"{lora['trainable_params'] / full['trainable_params']:.4f}x |")


if __name__ == "__main__":
    main()
