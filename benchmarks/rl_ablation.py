"""Compare RL runs that differ in one config field, same compute and seeds, side by side.

    python benchmarks/rl_ablation.py configs/default.toml --vary loss.level=sequence,token \
        --seeds 0,1 [section.key=value ...]

Each variant x seed is a full `longrl train` run (from the same start model) in
`runs/ablation/<field>=<value>/seed<k>`; the table reports held-out pass@1 before and after RL
(mean ± std over seeds), mean response tokens and wall time, and the ratio of each variant's
gain to the first variant's.
"""

from __future__ import annotations

import argparse
import statistics
import time

from longrl import loop
from longrl.config import RunConfig, load_config


def run_one(config_path: str, overrides: list[str], show: bool) -> dict[str, float]:
    run = loop.setup(load_config(RunConfig, config_path, overrides))
    start = time.perf_counter()
    summary = loop.train(run, show_progress=show)
    last = [line for line in (run.dir / "metrics.jsonl").read_text().splitlines() if line][-1]
    import json

    return {**summary, "mean_tokens": json.loads(last).get("eval/mean_tokens", float("nan")),
            "seconds": time.perf_counter() - start}


def fmt(values: list[float], scale: float = 1.0) -> str:
    values = [v * scale for v in values]
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--vary", required=True, help="section.key=v1,v2,...")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()
    field, _, values = args.vary.partition("=")
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for value in values.split(","):
        results = []
        for seed in seeds:
            name = f"ablation/{field}={value}/seed{seed}"
            results.append(run_one(args.config, [*args.overrides, f"{field}={value}", f"seed={seed}",
                                                 f"name={name}"], args.progress))
            print(f"{field}={value} seed={seed}: {results[-1]}", flush=True)
        rows.append((value, results))
    base_gain = None
    print(f"\n| {field} | pass@1 before RL (%) | pass@1 after RL (%) | gain (points) | gain ratio | mean tokens | seconds/run |")
    print("|---|---|---|---|---|---|---|")
    for value, results in rows:
        before = [r["start/pass@1"] for r in results]
        after = [r["end/pass@1"] for r in results]
        gain = statistics.mean(a - b for a, b in zip(after, before))
        base_gain = gain if base_gain is None else base_gain
        ratio = gain / base_gain if base_gain else float("nan")
        print(f"| {value} | {fmt(before, 100)} | {fmt(after, 100)} | {100 * gain:+.1f} | {ratio:.2f} | "
              f"{fmt([r['mean_tokens'] for r in results])} | {fmt([r['seconds'] for r in results])} |")


if __name__ == "__main__":
    main()
