"""Partial vs full rollouts on a long-tailed world (SPEC §8; prints ratios from one run, not a test).

World: `chain` sums. Most prompts have 2-3 terms (a ~10-30 token trace); a minority
(`--long-share`, default 15%) has `--long-terms` terms (default 24: a ~250 token trace, ~10x).
A tiny model is warmed up on chains of 2..long-terms terms (SFT), then both modes run the same
RL iterations from it on the same long-tailed prompt pool:

- full:    every iteration samples prompts_per_iter x k to completion (max_new_tokens long enough
           for the long chains), so each iteration waits for its longest trajectory;
- partial: the same token budget per iteration as prompts_per_iter x k x segment_tokens; each
           trajectory grows at most `segment_tokens` per iteration, unfinished ones continue later.

Reported per mode: completed (scored and trained) trajectories per rollout-second, trained tokens
(response) per wall-second, and the share of trained tokens sampled by an older policy.

    OMP_NUM_THREADS=1 python benchmarks/partial_rollout.py [--iterations 8] [--sft-steps 150]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time

from longrl.config import (LossConfig, PartialRolloutConfig, RunConfig, SFTConfig, TinyModelConfig,
                           TrainConfig, WorldConfig)
from longrl.data.worlds import format_trace, make_problem
from longrl.types import Prompt


def long_tailed_pool(n: int, long_share: float, long_terms: int, seed: int = 0) -> list[Prompt]:
    rng, pool = random.Random(seed), []
    for _ in range(n):
        terms = long_terms if rng.random() < long_share else rng.randint(2, 3)
        text, answer, lines = make_problem("chain", terms, rng)
        pool.append(Prompt(id=f"chain:{text}", text=text, answer=str(answer), tags=[f"terms:{terms}"],
                           meta={"trace": format_trace(lines, answer)}))
    return pool


def warm_up(out: str, steps: int, long_terms: int) -> str:
    from longrl.sft import run_sft

    config = SFTConfig(name="sft", out_dir=out, steps=steps, lr=3e-3, rows_per_step=8, row_tokens=1024,
                       log_every=10**6, threads=1,
                       tiny=TinyModelConfig(hidden_size=128, num_layers=2, intermediate_size=512),
                       world=WorldConfig(tasks=["chain"], min_level=2, max_level=long_terms, train_size=4000))
    config.eval.num_prompts, config.eval.n_samples, config.eval.max_new_tokens = 8, 1, 16
    run_sft(config, show_progress=False)
    return f"{out}/sft/final"


def run_mode(model: str, out: str, partial: bool, args, pool: list[Prompt]) -> dict[str, float]:
    from longrl import loop
    from longrl.sampler import UniformSampler

    config = RunConfig(name="partial" if partial else "full", out_dir=out, seed=0, threads=1, log_samples=0)
    config.rollout.prompts_per_iter, config.rollout.samples_per_prompt = args.prompts, args.k
    config.rollout.max_new_tokens = args.max_new_tokens
    config.train = TrainConfig(lr=5e-5, mini_batch_size=64, row_tokens=1024)
    config.loss = LossConfig()
    config.partial = PartialRolloutConfig(enabled=partial, segment_tokens=args.segment_tokens,
                                          max_age=args.max_age, age_policy="finish")
    run = loop.setup(config, model_path=model)
    run.sampler = UniformSampler(pool, seed=0)
    run.dir.mkdir(parents=True, exist_ok=True)
    rollout_s = completed = trained_tokens = old_tokens = 0.0
    start = time.perf_counter()
    for _ in range(args.iterations):
        m = loop.iteration(run)
        rollout_s += m["perf/rollout_s"]
        n = m["rollout/trajectories"]
        completed += n
        tokens = m["rollout/mean_tokens"] * n
        trained_tokens += tokens
        old_tokens += m.get("train/old_token_share", 0.0) * tokens
        if args.verbose:
            print(f"  {'partial' if partial else 'full'} iter {run.iteration}: rollout_s={m['perf/rollout_s']:.2f} "
                  f"requests={m.get('rollout/requests', n):.0f} completed={n:.0f} mean_tokens={m['rollout/mean_tokens']:.1f} "
                  f"reward={m['reward/mean']:.2f}", flush=True)
    wall = time.perf_counter() - start
    return {"completed_per_rollout_s": completed / rollout_s, "trained_tokens_per_wall_s": trained_tokens / wall,
            "old_token_share": old_tokens / max(trained_tokens, 1), "completed": completed,
            "rollout_s": rollout_s, "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--sft-steps", type=int, default=150)
    parser.add_argument("--model", default="", help="skip the warm-up and use this model directory")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--long-share", type=float, default=0.15)
    parser.add_argument("--long-terms", type=int, default=24)
    parser.add_argument("--max-new-tokens", type=int, default=320)
    parser.add_argument("--segment-tokens", type=int, default=48)
    parser.add_argument("--max-age", type=int, default=8)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    out = tempfile.mkdtemp(prefix="bench_partial_")
    t0 = time.perf_counter()
    model = args.model or warm_up(out, args.sft_steps, args.long_terms)
    print(f"warm-up: {time.perf_counter() - t0:.1f}s ({model})")
    pool = long_tailed_pool(2000, args.long_share, args.long_terms)
    full = run_mode(model, out, False, args, pool)
    part = run_mode(model, out, True, args, pool)
    for name, r in (("full", full), ("partial", part)):
        print(f"{name:8s} completed={r['completed']:.0f} rollout_s={r['rollout_s']:.1f} wall_s={r['wall_s']:.1f} "
              f"completed/rollout_s={r['completed_per_rollout_s']:.1f} "
              f"trained_tokens/wall_s={r['trained_tokens_per_wall_s']:.1f} old_token_share={r['old_token_share']:.3f}")
    print(f"ratio partial/full: completed per rollout-second "
          f"{part['completed_per_rollout_s'] / full['completed_per_rollout_s']:.2f}x, trained tokens per "
          f"wall-second {part['trained_tokens_per_wall_s'] / full['trained_tokens_per_wall_s']:.2f}x; "
          f"share of trained tokens from older policies (partial) {part['old_token_share']:.3f}")


if __name__ == "__main__":
    main()
