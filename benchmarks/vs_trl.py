"""longrl against TRL's GRPOTrainer, side by side on the tiny world (issue: learn faster than GRPO).

Both arms start from the same SFT checkpoint (configs/sft.toml), draw from the same training
prompts (the world of configs/default.toml), are rewarded by the same verifier
(`longrl.rewards.world`), generate 256 completions per step (32 prompts x 8) of at most 96 tokens
at temperature 1, and are evaluated by longrl's own `evaluate` on the same held-out prompts
(200 x 4 samples, seeded) every `--eval-every` steps. Evaluation is excluded from the timed
budget: the clock is the arm's own training time (longrl: the sum of `perf/iteration_s`; TRL:
the wall time of its steps, with the evaluation callback's time taken out). The arms run one at a
time, never beside each other.

TRL lives in its own environment, never in longrl's (longrl goes in with --no-deps, for its
verifier and evaluation):

    python3 -m venv .venv-trl && .venv-trl/bin/pip install torch==2.13.0 trl \\
        && .venv-trl/bin/pip install --no-deps -e .
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/vs_trl.py --trl-python .venv-trl/bin/python \\
        [--seeds 0 1 2] [--budget 240] [--longrl-set train.lr=1e-4 ...] [--trl-lr 1e-4]

Prints, per arm and seed, the training seconds at which held-out pass@1 first reaches each
`--thresholds` value and from which it stays at or above it, the mean pass@1 over the budget
(area under the step curve of evaluations, divided by the budget), seconds per step and peak
resident memory; then the means over seeds and the longrl/TRL ratios. Writes every curve to
`<out>/results.json`. Not a test: timings depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPTS_PER_STEP, SAMPLES, MAX_NEW_TOKENS = 32, 8, 96


# ---- the TRL arm (runs in the TRL environment) -------------------------------------------------


def trl_arm(args) -> None:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from longrl.config import EvalConfig, WorldConfig, load_config, RunConfig
    from longrl.data.sources import load_sources
    from longrl.evaluate import evaluate
    from longrl.models import load_tokenizer
    from longrl.rewards.world import check_answer, world_reward
    from longrl.rollout.engine import HFEngine

    torch.set_num_threads(args.threads)
    config = load_config(RunConfig, ROOT / "configs/default.toml")
    train = load_sources(config.data.train, "raise", config.world)
    held = load_sources(config.data.eval, "raise", config.world)[:200]
    answers = {p.text: p.answer for p in train}
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": p.text}], "question": p.text}
                                 for p in train])

    def reward(prompts, completions, question, **_):
        return [check_answer(c[0]["content"] if isinstance(c, list) else c, answers[q]).score
                for c, q in zip(completions, question)]

    tokenizer = load_tokenizer(args.model)
    curve: list[dict] = []

    class Clock(TrainerCallback):
        """Training seconds without the evaluations, and an evaluation every `eval_every` steps."""

        def __init__(self):
            self.start, self.paused = time.perf_counter(), 0.0

        def seconds(self) -> float:
            return time.perf_counter() - self.start - self.paused

        def measure(self, model, step: int) -> None:
            began, trained = time.perf_counter(), self.seconds()
            model.eval()
            engine = HFEngine(model, tokenizer, batch_size=256, seed=args.seed)
            metrics = evaluate(engine, tokenizer, held, {"world": (world_reward(), 1.0)},
                               EvalConfig(num_prompts=200, n_samples=4, temperature=1.0,
                                          max_new_tokens=MAX_NEW_TOKENS))
            model.train()
            curve.append({"step": step, "train_s": trained, "pass@1": metrics["eval/pass@1"]})
            print(json.dumps(curve[-1]), flush=True)
            self.paused += time.perf_counter() - began

        def on_train_begin(self, _args, state, control, model=None, **kw):
            self.start = time.perf_counter()
            self.measure(model, 0)

        def on_step_end(self, _args, state, control, model=None, **kw):
            if state.global_step % args.eval_every == 0:
                self.measure(model, state.global_step)
            if self.seconds() >= args.budget:
                control.should_training_stop = True

    grpo = GRPOConfig(
        output_dir=str(Path(args.out) / "trl_work"), learning_rate=args.trl_lr, loss_type=args.trl_loss,
        scale_rewards=args.trl_scale_rewards, beta=0.0, num_generations=SAMPLES,
        per_device_train_batch_size=PROMPTS_PER_STEP * SAMPLES, gradient_accumulation_steps=1,
        num_iterations=1, max_completion_length=MAX_NEW_TOKENS, temperature=1.0, max_steps=args.max_steps or 100_000,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, use_cpu=True, bf16=False,
        seed=args.seed, logging_steps=10_000, save_strategy="no", report_to="none", disable_tqdm=True)
    trainer = GRPOTrainer(model=args.model, reward_funcs=reward, args=grpo, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[Clock()])
    trainer.train()
    steps = curve[-1]["step"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    Path(args.result).write_text(json.dumps({"curve": curve, "steps": steps, "peak_rss": peak}))


# ---- the longrl arm and the driver (run in longrl's environment) -------------------------------


def longrl_arm(seed: int, args, model: str, out: Path) -> dict:
    name = f"longrl_s{seed}"
    shutil.rmtree(out / name, ignore_errors=True)  # a fresh run, not the remains of an earlier one
    # more than the budget allows (the loop stops at the budget), unless --max-steps caps them
    iterations = args.max_steps or int(args.budget / 0.5)
    command = [sys.executable, "-m", "longrl.cli", "train", str(ROOT / "configs/default.toml"), f"model.path={model}",
               f"out_dir={out}", f"name={name}", f"seed={seed}", f"iterations={iterations}",
               f"eval.every={args.eval_every}", f"threads={args.threads}", f"max_train_s={args.budget}",
               "checkpoint_every=0", "log_samples=0", "--no-progress", *args.longrl_set]
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    if status:
        raise SystemExit(f"longrl arm failed: {' '.join(command)}")
    rows = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    curve, seconds = [], 0.0
    for row in rows:
        seconds += row.get("perf/iteration_s", 0.0)
        if "eval/pass@1" in row:
            curve.append({"step": row["iteration"], "train_s": seconds, "pass@1": row["eval/pass@1"]})
    return {"curve": curve, "steps": max(r.get("iteration", 0) for r in rows), "peak_rss": usage.ru_maxrss * 1024}


def trl_run(seed: int, args, model: str, out: Path) -> dict:
    result = out / f"trl_s{seed}.json"
    command = [args.trl_python, __file__, "--trl-arm", f"--seed={seed}", f"--model={model}", f"--out={out}",
               f"--result={result}", f"--budget={args.budget}", f"--eval-every={args.eval_every}",
               f"--threads={args.threads}", f"--trl-lr={args.trl_lr}", f"--trl-loss={args.trl_loss}",
               f"--trl-scale-rewards={args.trl_scale_rewards}", f"--max-steps={args.max_steps}"]
    subprocess.run(command, check=True, cwd=ROOT)
    return json.loads(result.read_text())


def area_mean(curve: list[dict], axis: str, end: float) -> float:
    """Mean pass@1 over [0, end] of `axis` (`train_s` or `step`), each evaluation's value held
    until the next one."""
    points = [c for c in curve if c[axis] <= end]
    area = 0.0
    for here, nxt in zip(points, points[1:] + [{axis: end}]):
        area += here["pass@1"] * (min(nxt[axis], end) - here[axis])
    return area / end


def summarize(run: dict, thresholds: list[float], budget: float, steps: int = 80) -> dict:
    """Threshold times, the mean pass@1 over the budget (training seconds) and over the first
    `steps` steps (256 completions each in both arms: a measure of what a step teaches that the
    machine's speed and load do not change)."""
    curve = [c for c in run["curve"] if c["train_s"] <= budget]
    first = {t: next((c["train_s"] for c in curve if c["pass@1"] >= t), None) for t in thresholds}
    stays = {}
    for t in thresholds:  # the earliest evaluation from which every later one is >= t
        after = None
        for c in reversed(curve):
            if c["pass@1"] < t:
                break
            after = c["train_s"]
        stays[t] = after
    last = curve[-1]
    reached = max(c["step"] for c in run["curve"])
    by_step = area_mean(run["curve"], "step", steps) if reached >= steps else None
    return {"first": first, "stays": stays, "mean_pass@1": area_mean(curve, "train_s", budget),
            "mean_pass@1_steps": by_step, "final_pass@1": last["pass@1"],
            "s_per_step": last["train_s"] / max(last["step"], 1), "peak_rss_gb": run["peak_rss"] / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trl-python", default=str(ROOT / ".venv-trl/bin/python"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budget", type=float, default=240.0, help="training seconds per arm and seed")
    parser.add_argument("--eval-every", type=int, default=5, help="steps (longrl: iterations) between evaluations")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.70, 0.75])
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 2)))
    parser.add_argument("--longrl-set", nargs="*", default=[], metavar="KEY=VALUE", help="longrl config overrides")
    parser.add_argument("--trl-lr", type=float, default=1e-4)
    parser.add_argument("--trl-loss", default="dapo")
    parser.add_argument("--trl-scale-rewards", default="group")
    parser.add_argument("--arms", nargs="+", default=["longrl", "trl"], choices=["longrl", "trl"])
    parser.add_argument("--steps", type=int, default=80, help="steps of the per-step mean pass@1")
    parser.add_argument("--max-steps", type=int, default=0,
                        help="stop each run after this many steps (0: at the budget); with a large --budget, "
                             "a comparison by steps that the machine's load cannot change")
    parser.add_argument("--out", default="runs/vs_trl")
    parser.add_argument("--report", default="", metavar="RESULTS_JSON",
                        help="print the table of an earlier run's results.json (several, comma-separated: "
                             "one table) and exit")
    parser.add_argument("--model", default="", help="start checkpoint ('' = SFT of configs/sft.toml into --out)")
    # the TRL arm's own process
    parser.add_argument("--trl-arm", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--result", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trl_arm:
        return trl_arm(args)
    if args.report:
        paths, runs = args.report.split(","), {}
        for path in paths:  # arms of several files are told apart by their folder
            for arm, by_seed in json.loads(Path(path).read_text())["runs"].items():
                runs[arm if len(paths) == 1 else f"{arm} ({Path(path).parent.name})"] = by_seed
        return report(runs, args.thresholds, args.budget, args.steps)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    model = args.model or str(out / "sft/final")
    if not args.model and not (out / "sft/final/config.json").exists():
        subprocess.run([sys.executable, "-m", "longrl.cli", "sft", str(ROOT / "configs/sft.toml"), f"out_dir={out}",
                        "--no-progress"], check=True)
    runs = {arm: {} for arm in args.arms}
    for seed in args.seeds:
        for arm in args.arms:  # one arm at a time
            runs[arm][seed] = (longrl_arm if arm == "longrl" else trl_run)(seed, args, model, out)
            print(f"[{arm} seed {seed}] {json.dumps(runs[arm][seed]['curve'][-1])}", flush=True)
    (out / "results.json").write_text(json.dumps({"args": vars(args), "runs": runs}, indent=1))
    print(f"\nbudget {args.budget:.0f} training s per run; longrl overrides {args.longrl_set or 'none'}; TRL lr "
          f"{args.trl_lr}, loss {args.trl_loss}, scale_rewards {args.trl_scale_rewards}\n")
    report(runs, args.thresholds, args.budget, args.steps)


def mean_time(times: list[float | None], budget: float) -> str:
    """Mean over seeds of threshold times; a seed that never got there counts as the budget (*)."""
    mean = statistics.mean(budget if t is None else t for t in times)
    return f"{mean:.0f} s" + ("*" if None in times else "")


def report(runs: dict, thresholds: list[float], budget: float, steps: int) -> None:
    """The table of `runs` ({arm: {seed: run}}): per seed, the mean over seeds, and the ratios."""
    fmt = lambda v: "never" if v is None else f"{v:.0f} s"  # noqa: E731
    num = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    header = " | ".join(f"first >= {t} / stays >= {t}" for t in thresholds)
    print(f"| arm | seed | {header} | mean pass@1 over budget | mean pass@1 over {steps} steps | final pass@1 "
          "| s / step | peak RSS GB |")
    print("|---|---|" + "---|" * (len(thresholds) + 5))
    means = {}
    for arm, by_seed in runs.items():
        rows = {seed: summarize(run, thresholds, budget, steps) for seed, run in by_seed.items()}
        for seed, r in rows.items():
            cells = " | ".join(f"{fmt(r['first'][t])} / {fmt(r['stays'][t])}" for t in thresholds)
            print(f"| {arm} | {seed} | {cells} | {r['mean_pass@1']:.3f} | {num(r['mean_pass@1_steps'])} | "
                  f"{r['final_pass@1']:.3f} | {r['s_per_step']:.2f} | {r['peak_rss_gb']:.2f} |")
        means[arm] = m = {k: statistics.mean(r[k] for r in rows.values())
                          for k in ("mean_pass@1", "final_pass@1", "s_per_step", "peak_rss_gb")}
        by_step = [r["mean_pass@1_steps"] for r in rows.values()]
        m["mean_pass@1_steps"] = None if None in by_step else statistics.mean(by_step)
        cells = " | ".join(f"{mean_time([r['first'][t] for r in rows.values()], budget)} / "
                           f"{mean_time([r['stays'][t] for r in rows.values()], budget)}" for t in thresholds)
        print(f"| **{arm}** | **mean** | {cells} | **{m['mean_pass@1']:.3f}** | {num(m['mean_pass@1_steps'])} | "
              f"{m['final_pass@1']:.3f} | {m['s_per_step']:.2f} | {m['peak_rss_gb']:.2f} |")
    if "longrl" in means and "trl" in means:
        a, b = means["longrl"], means["trl"]
        print(f"\nlongrl / TRL: mean pass@1 over the budget {a['mean_pass@1'] / b['mean_pass@1']:.2f}x, s per step "
              f"{a['s_per_step'] / b['s_per_step']:.2f}x, peak memory {a['peak_rss_gb'] / b['peak_rss_gb']:.2f}x")


if __name__ == "__main__":
    main()
