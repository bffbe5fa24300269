"""Soak: a long run killed with SIGKILL at random moments and resumed each time, against the same
run left alone.

Two `longrl train` runs of one config start side by side: `straight` runs through; `killed` gets a
SIGKILL at a random moment every `--kill-min`..`--kill-max` seconds and is restarted with
`longrl train --resume` each time, until it finishes. Printed at the end:
- kills, and for each the iterations redone: logged before the kill minus the iteration the resume
  started from (at most `checkpoint_every` when nothing is lost);
- checkpoints lost: the newest complete checkpoint on disk right after a kill minus the one the
  resume started from (goal 0: a resume never falls back past a complete checkpoint);
- whether `metrics.jsonl` of the killed run holds each iteration once and equals the straight
  run's for every iteration (all but the `perf/` timings), and whether the final models are
  bit-identical.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/soak_resume.py --minutes 30

The straight run's model comes from `runs/sft/final` (the README's first command makes it; the
benchmark runs `longrl sft configs/sft.toml` when it is missing). `--iterations` is the length of
both runs; the killed run is restarted until it is done, so it soaks for as long as the run takes
plus what the kills cost; `--minutes` raises `--iterations` until the straight run's pace
(measured over its first iterations) would take at least that long.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from longrl import checkpoint  # noqa: E402

LONGRL = [sys.executable, "-m", "longrl.cli"]


def logged(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a torn last line
            pass
    return rows


def last_iteration(run_dir: Path) -> int:
    rows = logged(run_dir)
    return max((r["iteration"] for r in rows), default=-1)


def newest_checkpoint(run_dir: Path) -> int:
    found = checkpoint.latest(run_dir / "checkpoints")
    return int(found.name) if found else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "default.toml"))
    parser.add_argument("--model", default=str(ROOT / "runs" / "sft" / "final"),
                        help="start model; the default is made by `longrl sft configs/sft.toml` when missing")
    parser.add_argument("--out", default=str(ROOT / "runs" / "soak"))
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--minutes", type=float, default=0.0, help="soak at least this long (raises --iterations)")
    parser.add_argument("--checkpoint-every", type=int, default=5)
    parser.add_argument("--kill-min", type=float, default=60.0)
    parser.add_argument("--kill-max", type=float, default=180.0)
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    parser.add_argument("overrides", nargs="*", help="more config overrides for both runs")
    args = parser.parse_args()
    out, rng = Path(args.out), random.Random(args.seed)
    default_model = ROOT / "runs" / "sft" / "final"
    if Path(args.model) == default_model and not (default_model / "config.json").is_file():
        subprocess.run([*LONGRL, "sft", str(ROOT / "configs" / "sft.toml"), f"out_dir={ROOT / 'runs'}",
                        "--no-progress"], check=True, cwd=ROOT)
    iterations = args.iterations
    common = [args.config, f"out_dir={out}", f"model.path={args.model}", f"checkpoint_every={args.checkpoint_every}",
              "threads=1", "--no-progress", *args.overrides]
    if args.minutes:  # the pace of a short probe run decides the length
        probe = subprocess.run([*LONGRL, "train", *common, "name=probe", "iterations=10", "eval.every=0"],
                               capture_output=True, text=True, cwd=ROOT)
        if probe.returncode:
            sys.exit(probe.stderr[-3000:])
        seconds = sum(r.get("perf/iteration_s", 0.0) for r in logged(out / "probe")) / 10
        iterations = max(iterations, int(args.minutes * 60 / seconds) + 1)
        print(f"probe: {seconds:.2f} s per iteration -> {iterations} iterations", flush=True)
    both = [*common, f"iterations={iterations}"]
    start = time.monotonic()
    straight = subprocess.Popen([*LONGRL, "train", *both, "name=straight"], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    killed_dir, kills = out / "killed", []
    command = [*LONGRL, "train", *both, "name=killed"]
    while True:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        started_from = newest_checkpoint(killed_dir) if kills else 0
        if kills:
            kills[-1]["resumed_from"] = started_from
        deadline = time.monotonic() + rng.uniform(args.kill_min, args.kill_max)
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        if proc.poll() is not None:
            if proc.returncode != 0:
                sys.exit(f"the killed run failed on its own:\n{proc.stderr.read()[-3000:]}")
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills.append({"at_s": round(time.monotonic() - start, 1), "last_logged": last_iteration(killed_dir),
                      "checkpoint_on_disk": newest_checkpoint(killed_dir)})
        print(f"kill {len(kills)} at {kills[-1]['at_s']} s: iteration {kills[-1]['last_logged']} logged, "
              f"checkpoint {kills[-1]['checkpoint_on_disk']} on disk", flush=True)
        command = [*LONGRL, "train", "--resume", str(killed_dir), "--no-progress"]
    soak_s = time.monotonic() - start
    if straight.wait() != 0:
        sys.exit(f"the straight run failed:\n{straight.stderr.read()[-3000:]}")

    for k in kills:
        k["redone"] = k["last_logged"] - k["resumed_from"]
        k["checkpoints_lost"] = k["checkpoint_on_disk"] - k["resumed_from"]
    rows = logged(killed_dir)
    steps = [r["iteration"] for r in rows]
    strip = lambda r: {k: v for k, v in r.items() if not k.startswith("perf/")}  # noqa: E731
    expected = {r["iteration"]: strip(r) for r in logged(out / "straight")}
    got = {r["iteration"]: strip(r) for r in rows}
    differing = sorted(i for i in expected if got.get(i) != expected[i])
    a = load_file(out / "straight" / "final" / "model.safetensors")
    b = load_file(killed_dir / "final" / "model.safetensors")
    same_model = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    summary = {
        "iterations": iterations, "checkpoint_every": args.checkpoint_every, "soak_minutes": round(soak_s / 60, 1),
        "kills": len(kills), "redone_max": max((k["redone"] for k in kills), default=0),
        "redone_mean": round(sum(k["redone"] for k in kills) / max(len(kills), 1), 2),
        "checkpoints_lost": sum(k["checkpoints_lost"] for k in kills),
        "iterations_logged_once": len(steps) == len(set(steps)) == iterations + 1,
        "metrics_differing_iterations": differing[:10], "final_model_identical": same_model,
    }
    print(json.dumps({"kills": kills}, indent=None))
    print(json.dumps(summary, indent=2))
    return 0 if (same_model and not differing and summary["checkpoints_lost"] == 0) else 1


if __name__ == "__main__":
    sys.exit(main())
