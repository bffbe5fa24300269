"""A study of OPMD's settings on the tiny world: learning curves per setting, over several seeds.

Each setting is a name and longrl config overrides; every (setting, seed) is one run of
`configs/default.toml` from the same SFT start as `benchmarks/vs_trl.py` (its `longrl` arm: the
same prompts, budget clock and held-out evaluation), one run at a time:

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/opmd_study.py --budget 120 --seeds 0 1 2 \\
        --setting default \\
        --setting no_reset "train.optimizer_reset=none" \\
        --setting lr1e-4 "train.lr=1e-4 train.optimizer_reset=none"

Prints, per setting, the training seconds at which held-out pass@1 first reaches each threshold
and from which it stays there (mean over seeds; a seed that never gets there counts as the
budget), the mean pass@1 over the budget, the final pass@1, the largest dip (the most pass@1
falls from one evaluation to a later one) and seconds per iteration; and the mean pass@1 over the
first `--steps` iterations, which says what an iteration teaches whatever the machine's speed or
load. `--out/study.json` keeps every curve (`--report` prints the table of all of them). Not a
test: timings depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vs_trl import longrl_arm, mean_time, summarize  # noqa: E402  (the same arm and summary as the side-by-side)


def largest_dip(curve: list[dict]) -> float:
    """The most pass@1 falls from one evaluation to any later one."""
    peak, dip = 0.0, 0.0
    for point in curve:
        peak = max(peak, point["pass@1"])
        dip = max(dip, peak - point["pass@1"])
    return dip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", nargs="+", action="append", metavar=("NAME", "OVERRIDES"),
                        help="a name and, optionally, one string of space-separated KEY=VALUE overrides")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budget", type=float, default=240.0, help="training seconds per run")
    parser.add_argument("--steps", type=int, default=80, help="iterations of the per-iteration mean pass@1")
    parser.add_argument("--max-steps", type=int, default=0,
                        help="stop each run after this many iterations (0: at the budget)")
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.70, 0.75])
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 2)))
    parser.add_argument("--out", default="runs/vs_trl")
    parser.add_argument("--model", default="", help="start checkpoint (default: the SFT model vs_trl.py made in --out)")
    parser.add_argument("--report", action="store_true", help="print the table of every setting in --out/study.json")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    study_file = out / "study.json"
    study = json.loads(study_file.read_text()) if study_file.exists() else {}
    if args.report:
        return report(study, args)
    if not args.setting:
        parser.error("give at least one --setting (or --report)")
    model = args.model or str(out / "sft/final")
    if not (Path(model) / "config.json").exists():
        raise SystemExit(f"no start checkpoint at {model}: run benchmarks/vs_trl.py once, or pass --model")
    done = {}
    for name, *rest in args.setting:
        overrides = rest[0].split() if rest else []
        runs = {}
        for seed in args.seeds:
            arm = argparse.Namespace(budget=args.budget, eval_every=args.eval_every, threads=args.threads,
                                     longrl_set=overrides, max_steps=args.max_steps)
            runs[str(seed)] = longrl_arm(seed, arm, model, out / "study" / name)
            print(f"[{name} seed {seed}] {json.dumps(runs[str(seed)]['curve'][-1])}", flush=True)
        study[name] = done[name] = {"overrides": overrides, "budget": args.budget, "max_steps": args.max_steps,
                                    "runs": runs}
        study_file.write_text(json.dumps(study, indent=1))
    report(done, args)


def report(study: dict, args) -> None:
    """One row per setting of `study`: means over its seeds."""
    print(f"\nbudget {args.budget:.0f} training s per run; times are means over seeds (a seed that never reaches "
          f"a threshold counts as the budget, marked *); per-iteration mean over the first {args.steps} "
          "iterations\n")
    header = " | ".join(f"first {t} / stays {t}" for t in args.thresholds)
    print(f"| setting | seeds | {header} | mean pass@1 over budget | mean pass@1 over {args.steps} iterations | "
          "final pass@1 | largest dip | s / iteration |")
    print("|---|---|" + "---|" * (len(args.thresholds) + 5))
    for name, entry in study.items():
        runs = entry["runs"]
        rows = [summarize(run, args.thresholds, args.budget, args.steps) for run in runs.values()]
        cells = " | ".join(f"{mean_time([r['first'][t] for r in rows], args.budget)} / "
                           f"{mean_time([r['stays'][t] for r in rows], args.budget)}" for t in args.thresholds)
        mean = lambda key: statistics.mean(r[key] for r in rows)  # noqa: E731
        by_step = [r["mean_pass@1_steps"] for r in rows]
        by_step_cell = "-" if None in by_step else f"{statistics.mean(by_step):.3f}"
        dip = statistics.mean(largest_dip([c for c in run["curve"] if c["train_s"] <= args.budget])
                              for run in runs.values())
        print(f"| {name} (`{' '.join(entry['overrides']) or 'defaults'}`) | {len(runs)} | {cells} | "
              f"{mean('mean_pass@1'):.3f} | {by_step_cell} | {mean('final_pass@1'):.3f} | {dip:.3f} | "
              f"{mean('s_per_step'):.2f} |")


if __name__ == "__main__":
    main()
