"""Compare RL runs that differ in their config, same compute and seeds, side by side.

    python benchmarks/rl_ablation.py configs/default.toml --vary loss.level=sequence,token \
        --seeds 0,1 [section.key=value ...]
    python benchmarks/rl_ablation.py configs/ablation_sampler.toml --seeds 0,1,2 --jobs 2 --by-tag level \
        --arm uniform --arm "curriculum sampler.curriculum=warmup_then_hard" \
        --arm "prioritized sampler.kind=prioritized"

`--vary field=v1,v2` changes one field; each `--arm "LABEL [section.key=value ...]"` is a named
variant with its own overrides. Every variant x seed is a full `longrl train` run from the same
start model, in `runs/ablation/<label>/seed<k>` (label `field=value` for --vary). The table
reports held-out pass@1 before and after RL (mean ± std over seeds), the ratio of each variant's
gain to the first variant's, mean response tokens, the share of drawn prompts that were hard
(`sampler/hard_share`), the share of prompt groups whose k rewards were all equal, which carry no
learning signal (`reward/uniform_groups`), both averaged over iterations, and wall time per run.

`--by-tag PREFIX` adds held-out pass@1 per value of the prompts' `PREFIX:` tags (e.g. `level:1` ..
`level:4` of the tiny world) before and after RL. It is measured on the run's own engine with the
engine's RNG state put back afterwards, so the run itself is unchanged (HF engine; a vLLM run would
see different sampling randomness).

`--jobs N` runs N runs at a time, each in a spawned process with one torch thread. A run's
results are written to `result.json` in its directory; `--reuse` reads them instead of running again.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

from longrl import loop
from longrl.config import RunConfig, load_config
from longrl.evaluate import evaluate


def pass_by_tag(run: loop.Run, prefix: str) -> dict[str, float]:
    """Held-out pass@1 per `prefix:` tag value, leaving the engine's RNG as it found it."""
    groups: dict[str, list] = {}
    for p in run.eval_prompts[: run.config.eval.num_prompts]:
        for tag in p.tags:
            if tag.startswith(prefix + ":"):
                groups.setdefault(tag, []).append(p)
    generator = getattr(run.engine, "generator", None)
    state = generator.get_state() if generator is not None else None
    out = {tag: evaluate(run.engine, run.tokenizer, prompts, run.rewards, run.config.eval)["eval/pass@1"]
           for tag, prompts in sorted(groups.items())}
    if state is not None:
        generator.set_state(state)
    return out


def training_stats(run_dir: Path) -> dict[str, float]:
    """Means over iterations of `sampler/hard_share` and `reward/uniform_groups` (no-signal groups)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    out = {}
    for key, name in (("sampler/hard_share", "hard_share"), ("reward/uniform_groups", "uniform_groups")):
        values = [r[key] for r in rows if key in r]
        out[name] = statistics.mean(values) if values else float("nan")
    return out


def run_one(config_path: str, overrides: list[str], show: bool, by_tag: str = "") -> dict:
    run = loop.setup(load_config(RunConfig, config_path, overrides))
    start = time.perf_counter()
    before = pass_by_tag(run, by_tag) if by_tag else {}
    summary = loop.train(run, show_progress=show)
    after = pass_by_tag(run, by_tag) if by_tag else {}
    last = [line for line in (run.dir / "metrics.jsonl").read_text().splitlines() if line][-1]
    result = {**summary, "mean_tokens": json.loads(last).get("eval/mean_tokens", float("nan")),
              "seconds": time.perf_counter() - start, "before_by_tag": before, "after_by_tag": after,
              **training_stats(run.dir)}
    (run.dir / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def fmt(values: list[float], scale: float = 1.0) -> str:
    values = [v * scale for v in values]
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def variants(args) -> list[tuple[str, list[str]]]:
    """(label, overrides) of each variant, from --vary or --arm."""
    if args.vary:
        field, _, values = args.vary.partition("=")
        return [(f"{field}={value}", [f"{field}={value}"]) for value in values.split(",")]
    arms = [arm.split() for arm in args.arm]  # plain whitespace: quotes inside values survive
    return [(words[0], words[1:]) for words in arms]


def run_all(args, jobs: list[tuple[str, int, list[str]]]) -> dict[tuple[str, int], dict]:
    results, todo = {}, []
    for label, seed, overrides in jobs:
        out_dir = Path(load_config(RunConfig, args.config, overrides).out_dir)
        run_dir = out_dir / f"ablation/{label}/seed{seed}"
        path = run_dir / "result.json"
        if args.reuse and path.is_file():
            results[label, seed] = {**training_stats(run_dir), **json.loads(path.read_text())}
            print(f"{label} seed={seed}: reused {path}", flush=True)
        else:
            todo.append((label, seed, overrides))
    if args.jobs <= 1:
        for label, seed, overrides in todo:
            results[label, seed] = run_one(args.config, overrides, args.progress, args.by_tag)
            print(f"{label} seed={seed}: {results[label, seed]}", flush=True)
        return results
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(run_one, args.config, ["threads=1", *overrides], False, args.by_tag):
                   (label, seed) for label, seed, overrides in todo}
        for future in as_completed(futures):
            label, seed = futures[future]
            results[label, seed] = future.result()
            print(f"{label} seed={seed}: {results[label, seed]}", flush=True)
    return results


def print_tables(names: list[str], seeds: list[int], results: dict, by_tag: str, title: str,
                 tag_counts: dict[str, int]) -> None:
    base_gain = None
    print(f"\n| {title} | pass@1 before RL (%) | pass@1 after RL (%) | gain (points) | gain ratio | "
          "mean tokens | hard prompts drawn (%) | no-signal groups (%) | seconds/run |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in names:
        rows = [results[name, s] for s in seeds]
        before = [r["start/pass@1"] for r in rows]
        after = [r["end/pass@1"] for r in rows]
        gain = statistics.mean(a - b for a, b in zip(after, before))
        base_gain = gain if base_gain is None else base_gain
        ratio = gain / base_gain if base_gain else float("nan")
        print(f"| {name} | {fmt(before, 100)} | {fmt(after, 100)} | {100 * gain:+.1f} | {ratio:.2f} | "
              f"{fmt([r['mean_tokens'] for r in rows])} | {fmt([r['hard_share'] for r in rows], 100)} | "
              f"{fmt([r['uniform_groups'] for r in rows], 100)} | {fmt([r['seconds'] for r in rows])} |")
    if not by_tag:
        return
    tags = sorted({t for r in results.values() for t in r["after_by_tag"]})
    print(f"\nHeld-out pass@1 (%) per `{by_tag}` tag, mean ± std over seeds")
    print(f"\n| {title} | " + " | ".join(f"{t} ({tag_counts.get(t, '?')} prompts)" for t in tags) + " |")
    print("|---|" + "---|" * len(tags))
    every = [results[name, s] for name in names for s in seeds]
    start = [fmt([r["before_by_tag"][t] for r in every], 100) for t in tags]
    print("| start model (every run) | " + " | ".join(start) + " |")
    for name in names:
        rows = [results[name, s] for s in seeds]
        cells = [fmt([r["after_by_tag"][t] for r in rows], 100) for t in tags]
        print(f"| {name} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    choice = parser.add_mutually_exclusive_group(required=True)
    choice.add_argument("--vary", help="section.key=v1,v2,...")
    choice.add_argument("--arm", action="append", help='"LABEL [section.key=value ...]", repeatable')
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (each with 1 torch thread)")
    parser.add_argument("--by-tag", default="", help="tag prefix for per-tag pass@1, e.g. `level`")
    parser.add_argument("--reuse", action="store_true", help="read finished runs' result.json")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    named = variants(args)
    jobs = [(label, seed, [*args.overrides, *extra, f"seed={seed}", f"name=ablation/{label}/seed{seed}"])
            for seed in seeds for label, extra in named]  # seed-major: arms stay balanced
    results = run_all(args, jobs)
    title = args.vary.partition("=")[0] if args.vary else "arm"
    config = load_config(RunConfig, args.config, jobs[0][2])
    held_out = loop.eval_prompt_set(config)[: config.eval.num_prompts]
    counts = Counter(t for p in held_out for t in p.tags if t.startswith(args.by_tag + ":"))
    print_tables([label for label, _ in named], seeds, results, args.by_tag, title, dict(counts))


if __name__ == "__main__":
    main()
