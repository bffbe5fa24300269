"""The long2short experiment on the tiny world, end to end (SPEC §7; results in docs/long2short.md).

    OMP_NUM_THREADS=1 python benchmarks/long2short.py [--out-dir runs] [--docs docs]

Stages, each a `longrl` command printed before it runs and skipped when its output exists (so a
killed run resumes where it stopped; delete `<out-dir>/l2s_*` to start from scratch):

    long_sft    SFT from scratch on verbose (re-checking) traces
    short       SFT of long_sft on concise traces                   -> the short-CoT model
    long_rl     RL (OPMD) of long_sft, no length reward             -> the long-CoT model
    long_rl_len the same RL with the length reward on after warm-up  (length-reward experiment)
    merge       mean of the long and the short model
    shortest_rs 8 samples per prompt from the long model, SFT on the shortest correct
    dpo         DPO from the same samples (shortest correct vs longer), long model as reference
    l2s_rl      long2short RL from the long model: stronger length reward, max 64 new tokens
    report      every model on the same held-out prompts and seed: pass@1 and mean tokens, plot

Then prints the token-efficiency table and the length-reward comparison as markdown.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

LONGRL = [sys.executable, "-m", "longrl.cli"]


def stages(out: str) -> list[tuple[str, list[str], Path]]:
    """(name, longrl arguments, a file that exists once the stage is done)."""
    run = Path(out)
    common = [f"out_dir={out}"]
    return [
        ("long_sft", ["sft", "configs/sft_verbose.toml", *common], run / "l2s_long_sft/final/config.json"),
        ("short", ["sft", "configs/long2short_short.toml", *common, f"model.path={out}/l2s_long_sft/final"],
         run / "l2s_short/final/config.json"),
        ("long_rl", ["train", "configs/rl_verbose.toml", *common, f"model.path={out}/l2s_long_sft/final"],
         run / "l2s_long_rl/final/config.json"),
        ("long_rl_len", ["train", "configs/rl_verbose.toml", *common, "name=l2s_long_rl_len",
                         f"model.path={out}/l2s_long_sft/final", "reward.length_weight=0.5",
                         "reward.length_warmup=10"], run / "l2s_long_rl_len/final/config.json"),
        ("merge", ["merge", "--out", f"{out}/l2s_merge", f"{out}/l2s_long_rl/final", f"{out}/l2s_short/final"],
         run / "l2s_merge/config.json"),
        ("shortest_rs", ["shortest-rs", "configs/long2short_shortest_rs.toml", *common,
                         f"model.path={out}/l2s_long_rl/final"], run / "l2s_shortest_rs/final/config.json"),
        ("dpo", ["dpo", "configs/long2short_dpo.toml", *common, f"model.path={out}/l2s_long_rl/final",
                 f"sample.samples_file={out}/l2s_shortest_rs/samples.jsonl"], run / "l2s_dpo/final/config.json"),
        ("l2s_rl", ["train", "configs/long2short_rl.toml", *common, f"model.path={out}/l2s_long_rl/final"],
         run / "l2s_l2s_rl/final/config.json"),
    ]


MODELS = {  # table label -> run directory holding the model (under --out-dir)
    "short (long SFT + concise SFT)": "l2s_short/final",
    "long SFT (verbose)": "l2s_long_sft/final",
    "long (SFT verbose + RL)": "l2s_long_rl/final",
    "long RL + length reward": "l2s_long_rl_len/final",
    "merge (long+short)/2": "l2s_merge",
    "shortest rejection sampling": "l2s_shortest_rs/final",
    "DPO": "l2s_dpo/final",
    "long2short RL": "l2s_l2s_rl/final",
}


def run_stage(name: str, args: list[str], done: Path, log_dir: Path) -> None:
    command = "longrl " + shlex.join(args)
    if done.exists():
        print(f"[{name}] done already ({done}); skipped: {command}", flush=True)
        return
    print(f"[{name}] {command}", flush=True)
    start = time.perf_counter()
    with (log_dir / f"{name}.log").open("w") as log:
        quiet = ["--no-progress"] if args[0] in ("sft", "train", "shortest-rs", "dpo") else []
        code = subprocess.call([*LONGRL, *args, *quiet], stdout=log, stderr=subprocess.STDOUT)
    if code != 0:
        raise SystemExit(f"[{name}] failed with status {code}; see {log_dir / f'{name}.log'}")
    print(f"[{name}] finished in {time.perf_counter() - start:.0f} s", flush=True)


def last_eval(run_dir: Path) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    evals = [r for r in rows if "eval/pass@1" in r]
    rollout = [r["rollout/mean_tokens"] for r in rows if "rollout/mean_tokens" in r]
    return {"start": evals[0], "end": evals[-1], "rollout_tokens": rollout}


def length_reward_table(out: Path) -> str:
    """Plain RL vs RL with the length reward: same start, seed and iterations."""
    header = ("| run | pass@1 start (%) | pass@1 end (%) | eval mean tokens start → end | "
              "rollout mean tokens, iterations 1-10 → last 10 |")
    lines = [header, "|---|---|---|---|---|"]
    for label, name in (("RL, no length reward", "l2s_long_rl"),
                        ("RL, length reward 0.5 after 10 iterations", "l2s_long_rl_len")):
        e = last_eval(out / name)
        first, last = e["rollout_tokens"][:10], e["rollout_tokens"][-10:]
        lines.append(f"| {label} | {100 * e['start']['eval/pass@1']:.1f} | {100 * e['end']['eval/pass@1']:.1f} | "
                     f"{e['start']['eval/mean_tokens']:.1f} → {e['end']['eval/mean_tokens']:.1f} | "
                     f"{sum(first) / len(first):.1f} → {sum(last) / len(last):.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", default="runs", help="parent of the l2s_* run directories")
    parser.add_argument("--docs", default="docs", help="where the plot is copied (long2short_efficiency.png)")
    parser.add_argument("--eval-prompts", type=int, default=200, help="held-out prompts in the table")
    parser.add_argument("--eval-samples", type=int, default=4, help="samples per held-out prompt in the table")
    args = parser.parse_args()
    out = Path(args.out_dir)
    log_dir = out / "l2s_logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for name, stage_args, done in stages(args.out_dir):
        run_stage(name, stage_args, done, log_dir)
    report_dir = out / "l2s_report"
    report_args = ["report", "configs/rl_verbose.toml", f"eval.num_prompts={args.eval_prompts}",
                   f"eval.n_samples={args.eval_samples}", "--out", str(report_dir)]
    for label, path in MODELS.items():
        report_args += ["--model", f"{label}={out / path}"]
    run_stage("report", report_args, report_dir / "token_efficiency.json", log_dir)
    Path(args.docs).mkdir(parents=True, exist_ok=True)
    shutil.copy(report_dir / "token_efficiency.png", Path(args.docs) / "long2short_efficiency.png")
    print(f"\nwall time of this invocation: {time.perf_counter() - start:.0f} s\n")
    print("Token efficiency (held-out, same prompts and seed):\n")
    print((report_dir / "token_efficiency.md").read_text())
    print("Length reward during ordinary RL (verbose world):\n")
    print(length_reward_table(out))


if __name__ == "__main__":
    main()
