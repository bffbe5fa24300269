"""Reward models side by side on the tiny world (SPEC §6; results in docs/reward_models.md).

    OMP_NUM_THREADS=1 python benchmarks/rm_experiment.py [--out-dir runs/rmx]

Stages, each a `longrl` command printed before it runs and skipped when its output exists (a
killed run resumes where it stopped; delete the out dir to start from scratch):

    sft          the SFT policy of the README's first command (configs/sft.toml)
    label_train  4 responses of the SFT policy to each of 1,000 training prompts, labelled by the
                 world's verifier (`longrl rm label`)
    label_eval   the same for 200 held-out prompts: the RMs' shared held-out set
    rm           the classic RM: a scalar head on the SFT model, 3 epochs (`longrl rm train`)
    judge        the chain-of-thought judge: the SFT model fine-tuned on verdict traces
                 (`longrl rm train-judge`, the short template configs/judge_tiny.txt)
    rl_verifier  RL of configs/default.toml on the true verifier (the `world` reward)
    rl_rm        the same RL, rewarded by the classic RM's probability
    rl_judge     the same RL, rewarded by the judge's verdict

Every RL run is evaluated by the true verifier (`eval.reward = "world"`) and logs, beside the
reward it trains on, the verifier's score of its own training samples (`reward/world/mean`, a
weight-0 reward), so reward hacking shows as the RM's score rising while the verifier's falls.
Prints the RMs' held-out accuracy and each run's true held-out pass@1 by iteration, as markdown.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

LONGRL = [sys.executable, "-m", "longrl.cli"]
RL_ITERATIONS = 100
RL_COMMON = [f"iterations={RL_ITERATIONS}", "eval.every=10", "eval.reward=world"]


def stages(out: str) -> list[tuple[str, list[str], Path]]:
    """(name, longrl arguments, a file that exists once the stage is done)."""
    run = Path(out)
    sft = f"{out}/sft/final"
    common = [f"out_dir={out}"]
    watch = 'reward.weights=[1.0, 0.0]'  # the verifier rides along with weight 0: logged, not trained on
    return [
        ("sft", ["sft", "configs/sft.toml", *common], run / "sft/final/config.json"),
        ("label_train", ["rm", "label", "configs/rm_label.toml", f"model.path={sft}",
                         f"out={out}/labelled_train.jsonl"], run / "labelled_train.jsonl"),
        ("label_eval", ["rm", "label", "configs/rm_label.toml", f"model.path={sft}", "split=eval",
                        "sample.num_prompts=200", f"out={out}/labelled_eval.jsonl"], run / "labelled_eval.jsonl"),
        ("rm", ["rm", "train", *common, f"model.path={sft}", f"data={out}/labelled_train.jsonl",
                f"eval_data={out}/labelled_eval.jsonl", "epochs=3", "lr=1e-4", "batch_size=32"],
         run / "rm/final/config.json"),
        ("judge", ["rm", "train-judge", *common, f"model.path={sft}", f"data={out}/labelled_train.jsonl",
                   f"eval_data={out}/labelled_eval.jsonl", "template=configs/judge_tiny.txt", "steps=600",
                   "lr=2e-3", "rows_per_step=16", "row_tokens=512", "max_new_tokens=128"],
         run / "judge/final/config.json"),
        ("rl_verifier", ["train", "configs/default.toml", *common, *RL_COMMON, "name=rl_verifier",
                         f"model.path={sft}"], run / "rl_verifier/final/config.json"),
        ("rl_rm", ["train", "configs/default.toml", *common, *RL_COMMON, "name=rl_rm", f"model.path={sft}",
                   'reward.names=["rm", "world"]', watch, f"reward.rm.model={out}/rm/final"],
         run / "rl_rm/final/config.json"),
        ("rl_judge", ["train", "configs/default.toml", *common, *RL_COMMON, "name=rl_judge", f"model.path={sft}",
                      'reward.names=["judge", "world"]', watch, f"reward.judge.model={out}/judge/final",
                      "reward.judge.template=configs/judge_tiny.txt", "reward.judge.max_new_tokens=128",
                      "reward.judge.batch_size=256"], run / "rl_judge/final/config.json"),
    ]


def metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def accuracy_table(out: Path) -> str:
    rm = metrics(out / "rm/metrics.jsonl")[-1]
    judge = json.loads((out / "judge/eval.json").read_text()) if (out / "judge/eval.json").exists() else {}
    held = [json.loads(line) for line in (out / "labelled_eval.jsonl").read_text().splitlines()]
    positive = sum(r["label"] for r in held) / len(held)
    lines = ["| reward model | held-out accuracy | rows |", "|---|---|---|",
             f"| always 'wrong' (the majority label) | {max(positive, 1 - positive):.3f} | {len(held)} |",
             f"| classic RM (value head) | {rm['rm/accuracy']:.3f} | {rm['rm/held_out_rows']:.0f} |"]
    if judge:
        lines.append(f"| chain-of-thought judge | {judge['eval/pass@1']:.3f} | {len(held)} |")
    return "\n".join(lines) + "\n"


def rl_table(out: Path) -> str:
    runs = {"verifier": "rl_verifier", "classic RM": "rl_rm", "judge": "rl_judge"}
    rows = {label: metrics(out / name / "metrics.jsonl") for label, name in runs.items()
            if (out / name / "metrics.jsonl").exists()}
    evals = {label: {m["iteration"]: m["eval/pass@1"] for m in ms if "eval/pass@1" in m} for label, ms in rows.items()}
    iterations = sorted({i for e in evals.values() for i in e})
    lines = ["| iteration | " + " | ".join(f"{label}: true pass@1" for label in evals) + " |",
             "|---|" + "---|" * len(evals)]
    for i in iterations:
        lines.append(f"| {i} | " + " | ".join(f"{e[i]:.3f}" if i in e else "" for e in evals.values()) + " |")
    lines += ["", "| run | trained-on reward, first 10 / last 10 iterations | verifier on its training samples, "
              "first 10 / last 10 | training time |", "|---|---|---|---|"]
    for label, ms in rows.items():
        steps = [m for m in ms if "reward/mean" in m]
        mean = lambda xs, key: sum(m.get(key, m["reward/mean"]) for m in xs) / max(len(xs), 1)  # noqa: E731
        watched = "reward/world/mean"
        seconds = sum(m.get("perf/iteration_s", 0.0) for m in steps)
        lines.append(f"| {label} | {mean(steps[:10], 'reward/mean'):.3f} / {mean(steps[-10:], 'reward/mean'):.3f} | "
                     f"{mean(steps[:10], watched):.3f} / {mean(steps[-10:], watched):.3f} | {seconds / 60:.1f} min |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", default="runs/rmx")
    parser.add_argument("--only", nargs="*", help="run only these stages (names above)")
    args = parser.parse_args()
    out = Path(args.out_dir)
    for name, argv, done in stages(args.out_dir):
        if done.exists() or (args.only and name not in args.only):
            continue
        print(f"[{name}] longrl {shlex.join(argv)}", flush=True)
        start = time.perf_counter()
        subprocess.run([*LONGRL, *argv, "--no-progress"], check=True)
        print(f"[{name}] {time.perf_counter() - start:.0f} s", flush=True)
    print("\n## Held-out accuracy of the reward models\n")
    print(accuracy_table(out))
    print("## RL on each reward, scored by the true verifier\n")
    print(rl_table(out))


if __name__ == "__main__":
    main()
