"""Partial vs full rollouts on a long-tailed world (SPEC §8; prints ratios from one run, not a test).

World: `chain` sums. Most prompts have 2-3 terms (a ~10-30 token trace); a minority
(`--long-share`, default 15%) has `--long-terms` terms (default 24: a ~250 token trace, ~10x).
A tiny model is warmed up on chains of 2..long-terms terms (SFT), then both modes run the same
RL iterations from it on the same long-tailed prompt pool:

- full:    every iteration samples prompts_per_iter x k to completion (max_new_tokens long enough
           for the long chains), so each iteration waits for its longest trajectory;
- partial: each trajectory grows at most `segment_tokens` per iteration, unfinished ones continue
           later; the token budget (2 x prompts_per_iter x k x segment_tokens by default) leaves
           room for prompts_per_iter new groups beside the continuations, so both modes start the
           same prompts per iteration.

Reported per mode: completed (scored and trained) trajectories per rollout-second, trained tokens
(response) per wall-second, and the share of trained tokens sampled by an older policy. The two
runs advance in turns, one iteration each, in this process, so machine load falls on both alike.
The first `--warmup` iterations of both are run but not counted: partial rollouts start with an
empty buffer and complete nothing until their first long groups finish, so counting from
iteration 1 measures the fill of the pipeline, not its throughput (and the first call of an
engine pays its one-off start-up).

Training takes the same time per trained token in both modes (more for partial rollouts when older
segments need their log-probs recomputed), so trained tokens per wall-second cannot exceed
(rollout + training time) / training time of the full run however fast partial rollouts are; the
benchmark prints that bound, measured, beside the ratio.

    OMP_NUM_THREADS=1 python benchmarks/partial_rollout.py [--iterations 12] [--warmup 6] [--sft-steps 150]
        [--threads 1] [--profile]
        [--model DIR | --out DIR] [--engine hf|vllm]
    (--out keeps the warm-up in DIR/partial_chain_sft/final for later --model runs)
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

    config = SFTConfig(name="partial_chain_sft", out_dir=out, steps=steps, lr=3e-3, rows_per_step=8,
                       row_tokens=1024, log_every=10**6, threads=1,
                       tiny=TinyModelConfig(hidden_size=128, num_layers=2, intermediate_size=512),
                       world=WorldConfig(tasks=["chain"], min_level=2, max_level=long_terms, train_size=4000))
    config.eval.num_prompts, config.eval.n_samples, config.eval.max_new_tokens = 8, 1, 16
    run_sft(config, show_progress=False)
    return f"{out}/partial_chain_sft/final"


def start_mode(model: str, out: str, partial: bool, args, pool: list[Prompt]):
    from longrl import loop
    from longrl.sampler import UniformSampler

    config = RunConfig(name="partial_bench_" + ("on" if partial else "off"), out_dir=out, seed=0,
                       threads=args.threads, log_samples=0)
    config.rollout.prompts_per_iter, config.rollout.samples_per_prompt = args.prompts, args.k
    config.rollout.max_new_tokens, config.rollout.engine = args.max_new_tokens, args.engine
    config.train = TrainConfig(lr=5e-5, mini_batch_size=64, row_tokens=1024)
    config.loss = LossConfig()
    config.partial = PartialRolloutConfig(enabled=partial, segment_tokens=args.segment_tokens,
                                          max_age=args.max_age, age_policy="finish",
                                          token_budget=args.token_budget or 2 * args.prompts * args.k * args.segment_tokens)
    run = loop.setup(config, model_path=model)
    run.sampler = UniformSampler(pool, seed=0)
    run.dir.mkdir(parents=True, exist_ok=True)
    return run


def step_mode(run, totals: dict[str, float], verbose: bool) -> None:
    """One iteration of `run`, its figures added to `totals`."""
    from longrl import loop

    start = time.perf_counter()
    m = loop.iteration(run)
    totals["wall_s"] += time.perf_counter() - start
    totals["rollout_s"] += m["perf/rollout_s"]
    n = m["rollout/trajectories"]
    tokens = m["rollout/mean_tokens"] * n
    totals["completed"] += n
    totals["trained_tokens"] += tokens
    totals["old_tokens"] += m.get("train/old_token_share", 0.0) * tokens
    totals["sampled_tokens"] += m.get("rollout/new_tokens", tokens)  # full: every sampled token is trained
    if verbose:
        print(f"  {run.config.name} iter {run.iteration}: rollout_s={m['perf/rollout_s']:.2f} "
              f"iteration_s={m['perf/iteration_s']:.2f} requests={m.get('rollout/requests', n):.0f} "
              f"completed={n:.0f} mean_tokens={m['rollout/mean_tokens']:.1f} reward={m['reward/mean']:.2f}",
              flush=True)


def instrument(run, profile: dict[str, float]) -> None:
    """--profile: add each engine call's seconds and sampled tokens to `profile` by what the call
    held (only continuations, only new samples, or both), and the seconds of the trainer's
    recomputation of π_θi log-probs (`current_logprobs`) and of its training phase."""
    def timed(fn, key_of):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            key, tokens = key_of(args, out)
            profile[key + "_s"] = profile.get(key + "_s", 0.0) + time.perf_counter() - start
            profile[key + "_calls"] = profile.get(key + "_calls", 0.0) + 1
            profile[key + "_tokens"] = profile.get(key + "_tokens", 0.0) + tokens
            return out
        return wrapper

    def call_kind(args, out):
        continued = sum(bool(r.prefix_ids) for r in args[0])
        kind = "continued" if continued == len(args[0]) else "new" if continued == 0 else "mixed"
        return f"generate[{kind}]", sum(len(c.token_ids) for c in out)

    run.engine.generate = timed(run.engine.generate, call_kind)
    run.trainer.current_logprobs = timed(run.trainer.current_logprobs, lambda args, out: ("recompute_logprobs", 0))
    run.trainer.train_iteration = timed(run.trainer.train_iteration, lambda args, out: ("train_iteration", 0))


def print_profile(name: str, profile: dict[str, float]) -> None:
    parts = []
    for key in sorted({k.rsplit("_", 1)[0] for k in profile}):
        seconds, calls, tokens = (profile.get(f"{key}_{x}", 0.0) for x in ("s", "calls", "tokens"))
        rate = f", {tokens / seconds:.0f} tok/s" if tokens else ""
        parts.append(f"{key} {seconds:.1f}s/{calls:.0f} calls{rate}")
    print(f"  profile {name}: " + "; ".join(parts))


def run_both(model: str, out: str, args, pool: list[Prompt]) -> tuple[dict, dict]:
    """Full and partial runs from the same model, advanced in turns (one iteration each)."""
    runs = [start_mode(model, out, partial, args, pool) for partial in (False, True)]
    profiles: list[dict[str, float]] = [{}, {}]
    if args.profile:
        for run, profile in zip(runs, profiles):
            instrument(run, profile)
    totals = [dict.fromkeys(("wall_s", "rollout_s", "completed", "trained_tokens", "old_tokens", "sampled_tokens"), 0.0)
              for _ in runs]
    scratch = [dict.fromkeys(t, 0.0) for t in totals]  # the warm-up's figures, not reported
    for i in range(args.warmup + args.iterations):
        sinks = scratch if i < args.warmup else totals
        if i == args.warmup:
            for profile in profiles:
                profile.clear()  # the warm-up's calls are not counted either
        for run, t in (zip(runs, sinks) if i % 2 == 0 else zip(runs[::-1], sinks[::-1])):
            step_mode(run, t, args.verbose)
    for t in totals:
        t["completed_per_rollout_s"] = t["completed"] / t["rollout_s"]
        t["trained_tokens_per_wall_s"] = t["trained_tokens"] / t["wall_s"]
        t["old_token_share"] = t["old_tokens"] / max(t["trained_tokens"], 1)
        t["train_s"] = t["wall_s"] - t["rollout_s"]  # training, scoring and weight sync
    if args.profile:
        for name, profile in zip(("full", "partial"), profiles):
            print_profile(name, profile)
    return totals[0], totals[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=12, help="iterations counted, per mode")
    parser.add_argument("--warmup", type=int, default=6, help="iterations run first and not counted")
    parser.add_argument("--sft-steps", type=int, default=150)
    parser.add_argument("--model", default="", help="skip the warm-up and use this model directory")
    parser.add_argument("--out", default="", help="directory for the warm-up and the runs (default: a temp dir)")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--long-share", type=float, default=0.15)
    parser.add_argument("--long-terms", type=int, default=24)
    parser.add_argument("--max-new-tokens", type=int, default=320)
    parser.add_argument("--segment-tokens", type=int, default=48)
    parser.add_argument("--max-age", type=int, default=8)
    parser.add_argument("--token-budget", type=int, default=0,
                        help="partial.token_budget; 0: 2 x prompts x k x segment-tokens, room for the "
                             "prompts' new groups beside the continuations, so both modes start the "
                             "same number of prompts per iteration")
    parser.add_argument("--engine", default="hf", choices=["hf", "vllm"], help="rollout.engine of both runs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of both runs (set "
                        "OMP_NUM_THREADS to match: vLLM binds its OpenMP threads at start)")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--profile", action="store_true", help="also print where each mode's time "
                        "went: engine calls by content, the trainer's log-prob recomputation, training")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    out = args.out or tempfile.mkdtemp(prefix="bench_partial_")
    t0 = time.perf_counter()
    model = args.model or warm_up(out, args.sft_steps, args.long_terms)
    print(f"warm-up: {time.perf_counter() - t0:.1f}s ({model})")
    pool = long_tailed_pool(2000, args.long_share, args.long_terms)
    full, part = run_both(model, out, args, pool)
    for name, r in (("full", full), ("partial", part)):
        print(f"{name:8s} completed={r['completed']:.0f} rollout_s={r['rollout_s']:.1f} wall_s={r['wall_s']:.1f} "
              f"completed/rollout_s={r['completed_per_rollout_s']:.1f} "
              f"trained_tokens/wall_s={r['trained_tokens_per_wall_s']:.1f} old_token_share={r['old_token_share']:.3f} "
              f"sampled_tokens/rollout_s={r['sampled_tokens'] / r['rollout_s']:.0f}")
    print(f"ratio partial/full: completed per rollout-second "
          f"{part['completed_per_rollout_s'] / full['completed_per_rollout_s']:.2f}x, trained tokens per "
          f"wall-second {part['trained_tokens_per_wall_s'] / full['trained_tokens_per_wall_s']:.2f}x; "
          f"share of trained tokens from older policies (partial) {part['old_token_share']:.3f}")
    ceiling = full["trained_tokens"] / full["train_s"] / full["trained_tokens_per_wall_s"]
    print(f"bound: trained tokens per wall-second of a rollout that took no time at all would be "
          f"{ceiling:.2f}x the full run's (training {full['train_s'] / full['wall_s']:.0%} of its wall time)")


if __name__ == "__main__":
    main()
