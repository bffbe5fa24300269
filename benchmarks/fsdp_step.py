"""Benchmark: one training iteration as a 2-rank FSDP2 group on CPU (gloo) against one process.

For each model shape, the same synthetic iteration (`--sequences` trajectories in groups of 4,
prompts of 32 tokens, responses of 64 .. `--max-response` tokens, binary rewards) is trained by
  - baseline: one `Trainer` in one process;
  - fsdp: `--ranks` processes, each a `Trainer(distributed=True)` over a gloo group, each
    given the whole list (each mini-batch is split over the ranks by tokens);
and the script prints, per shape, the wall time of one `train_iteration` (best of `--repeat`,
after one warm-up iteration) and the peak resident memory per process above its memory before
the model was built (`ru_maxrss`, so each measurement runs in fresh processes), with the
fsdp/baseline ratios. Every process uses `--threads` intra-op threads, so the group uses
`ranks` times the cores of the baseline. Not a test: timings depend on the machine and its load.

Shapes: `tiny` (the unit tests' Qwen2: hidden 64, 2 layers, 262 tokens) and `small` (a Qwen2 of
hidden 512, 8 layers, 8 heads, 2 KV heads, MLP 2048, 32k vocabulary, tied embeddings: 50M
parameters), float32.

    OMP_NUM_THREADS=1 python benchmarks/fsdp_step.py [--models tiny small] [--ranks 2] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

SHAPES = {
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
             "intermediate_size": 128, "vocab_size": 262},
    "small": {"hidden_size": 512, "num_hidden_layers": 8, "num_attention_heads": 8, "num_key_value_heads": 2,
              "intermediate_size": 2048, "vocab_size": 32768},
}


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def build_model(name: str):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(**SHAPES[name], max_position_embeddings=4096, tie_word_embeddings=True)
    config._attn_implementation = "sdpa"
    return Qwen2ForCausalLM(config)


def trajectories(name: str, args) -> list:
    """`args.sequences` random trajectories, 4 samples per prompt, rewards 0/1 within each group."""
    import random

    from longrl.types import Prompt, Segment, Trajectory

    rng = random.Random(0)
    vocab = SHAPES[name]["vocab_size"]
    out = []
    for j in range(args.sequences):
        prompt = Prompt(id=f"p{j // 4}", text="", answer="")
        n = rng.randint(64, args.max_response)
        response = [rng.randrange(1, vocab) for _ in range(n)]
        out.append(Trajectory(prompt=prompt, sample_index=j % 4, prompt_ids=[rng.randrange(1, vocab) for _ in range(32)],
                              segments=[Segment(response, [-2.0] * n, 0)], finish_reason="stop",
                              reward=float(j % 2)))
    return out


def train_config(args):
    from longrl.config import TrainConfig

    return TrainConfig(lr=1e-5, mini_batch_size=args.mini_batch, row_tokens=args.row_tokens,
                       max_tokens_per_micro_batch=args.row_tokens, logprob_chunk_tokens=1024)


def measure(name: str, distributed: bool, args) -> dict:
    """Build the trainer, run a warm-up iteration, then time `repeat` iterations (best counts)."""
    import torch
    from transformers import Qwen2ForCausalLM  # noqa: F401  imported before `before`: code is not model memory

    from longrl.config import LossConfig
    from longrl.trainer import Trainer

    torch.set_num_threads(args.threads)
    before = resident_bytes()
    trainer = Trainer(build_model(name), train_config(args), LossConfig(), pad_id=0, distributed=distributed)
    batch = trajectories(name, args)
    trainer.train_iteration(batch)
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        metrics = trainer.train_iteration(batch)
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    params = None if distributed else sum(p.numel() for p in trainer.model.parameters())
    return {"iteration_s": min(times), "peak_mb": (peak - before) / 2**20, "loss": metrics["loss/opmd"],
            "params": params}


def _rank_main(rank: int, name: str, args, store: str, out_dir: str) -> None:
    from longrl.distributed import init_group

    init_group("gloo", rank, args.ranks, f"file://{store}")
    result = measure(name, True, args)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)


def measure_group(name: str, args) -> dict:
    """`measure` on every rank of a fresh group; the slowest rank's time and the largest peak."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_rank_main, args=(name, args, os.path.join(out_dir, "store"), out_dir), nprocs=args.ranks)
        ranks = [json.load(open(os.path.join(out_dir, f"rank{r}.json"))) for r in range(args.ranks)]
    return {"iteration_s": max(r["iteration_s"] for r in ranks), "peak_mb": max(r["peak_mb"] for r in ranks),
            "loss": ranks[0]["loss"], "peak_mb_per_rank": [r["peak_mb"] for r in ranks]}


def measure_fresh(mode: str, name: str, args) -> dict | None:
    """One (mode, model) in a fresh process: ru_maxrss is a per-process high-water mark."""
    options = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("models", "one")]
    run = subprocess.run([sys.executable, __file__, "--one", f"{mode}:{name}", *options],
                         capture_output=True, text=True, check=False)
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    if run.returncode or not lines:
        print(f"{mode} {name}: failed (exit {run.returncode})\n{run.stderr[-3000:]}", flush=True)
        return None
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per process")
    parser.add_argument("--sequences", type=int, default=16)
    parser.add_argument("--max-response", type=int, default=256)
    parser.add_argument("--mini-batch", type=int, default=8, help="sequences per optimizer step")
    parser.add_argument("--row-tokens", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=2, help="timed iterations; the best counts")
    parser.add_argument("--one", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        mode, name = args.one.split(":")
        result = measure_group(name, args) if mode == "fsdp" else measure(name, False, args)
        print("RESULT " + json.dumps(result), flush=True)
        return
    print(f"{'model':6} {'params':>7} {'baseline s':>10} {'fsdp s':>7} {'fsdp/base':>9} "
          f"{'baseline MB':>11} {'fsdp MB/rank':>12} {'fsdp/base':>9} {'loss diff':>9}")
    for name in args.models:
        base, fsdp = measure_fresh("baseline", name, args), measure_fresh("fsdp", name, args)
        if not base or not fsdp:
            continue
        print(f"{name:6} {base['params'] / 1e6:6.1f}M {base['iteration_s']:10.2f} {fsdp['iteration_s']:7.2f} "
              f"{fsdp['iteration_s'] / base['iteration_s']:8.2f}x {base['peak_mb']:11.0f} "
              f"{fsdp['peak_mb']:12.0f} {fsdp['peak_mb'] / base['peak_mb']:8.2f}x "
              f"{abs(fsdp['loss'] - base['loss']):9.1e}", flush=True)


if __name__ == "__main__":
    main()
