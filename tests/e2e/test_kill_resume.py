"""A run killed with SIGKILL anywhere and resumed with `longrl train --resume` ends exactly as an
uninterrupted run: the same metrics for every iteration, logged once each, and bit-identical
final parameters (HF engine; `checkpoint.py` writes each checkpoint aside and renames it in place).

One run is killed five times in a row, at each kill point of `_killed_train.py`, and resumed each
time; a second runs the same config through without interruption.
"""

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

KILLER = Path(__file__).with_name("_killed_train.py")
CONFIG = ["iterations=6", "checkpoint_every=2", "checkpoint_keep=1", "threads=1", "world.tasks=['add']",
          "world.min_level=1", "world.max_level=2", "world.train_size=64", "world.eval_size=8",
          "rollout.prompts_per_iter=4", "rollout.samples_per_prompt=4", "rollout.max_new_tokens=12",
          "train.mini_batch_size=8", "train.row_tokens=64", "train.lr=1e-3", "eval.every=2", "eval.num_prompts=8",
          "eval.n_samples=2", "eval.max_new_tokens=12", "log_samples=2"]
# (stage, call) of each kill, in order; each process after the first is `--resume RUN_DIR`
KILLS = [
    ("eval", 1),        # the start model's evaluation, before any checkpoint: the run restarts
    ("rollout", 3),     # iteration 3's rollout; resumes from checkpoint 2
    ("train", 2),       # after the resume from 2, the update of iteration 4
    ("checkpoint", 1),  # the write of checkpoint 4 (model written, state and marker not)
    ("eval", 2),        # after checkpoint 4, iteration 6's evaluation, before checkpoint 6
]


def _train(args, kill=None):
    prefix = [sys.executable, str(KILLER), kill[0], str(kill[1])] if kill else [sys.executable, "-m", "longrl.cli"]
    return subprocess.run([*prefix, "train", "--no-progress", *args], capture_output=True, text=True, timeout=600)


def _metrics(run_dir: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    iterations = [r["iteration"] for r in rows]
    assert len(iterations) == len(set(iterations)), f"an iteration logged twice: {iterations}"
    return {r["iteration"]: {k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    out = tmp_path_factory.mktemp("kill")
    base = [f"out_dir={out}", f"model.path={tiny_model_dir}", *CONFIG]
    done = _train([*base, "name=straight"])
    assert done.returncode == 0, done.stderr[-3000:]
    killed = out / "killed"
    states = []
    for i, kill in enumerate(KILLS):
        args = [*base, "name=killed"] if i == 0 else ["--resume", str(killed)]
        proc = _train(args, kill)
        assert proc.returncode == -signal.SIGKILL, (kill, proc.returncode, proc.stderr[-3000:])
        states.append(sorted(p.name for p in (killed / "checkpoints").iterdir()) if (killed / "checkpoints").exists()
                      else [])
    last = _train(["--resume", str(killed)])
    assert last.returncode == 0, last.stderr[-3000:]
    return out / "straight", killed, states


def test_each_kill_left_what_a_resume_needs(runs):
    _, _, states = runs
    assert states[0] == []                     # killed before any checkpoint
    assert states[1] == states[2] == ["2"]     # checkpoint 2 only (checkpoint_keep=1)
    assert states[3] == [".partial-4", "2"]    # the half-written checkpoint 4, never taken for one
    assert states[4] == ["4"]                  # 4 written whole on the next try, 2 then dropped


def test_resumed_run_equals_the_uninterrupted_one(runs):
    straight, killed, _ = runs
    expected, got = _metrics(straight), _metrics(killed)
    assert sorted(got) == sorted(expected) == list(range(7))
    for i in expected:
        assert got[i] == expected[i], i
    assert "eval/pass@1" in got[0] and "loss/opmd" in got[6]
    a, b = load_file(straight / "final" / "model.safetensors"), load_file(killed / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(p.name for p in (killed / "samples").iterdir()) == sorted(p.name for p in (straight / "samples").iterdir())
    for sample in (straight / "samples").iterdir():
        assert (killed / "samples" / sample.name).read_text() == sample.read_text()


def test_tensorboard_shows_each_iteration_once(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    straight, killed, _ = runs
    curves = []
    for run in (straight, killed):
        events = EventAccumulator(str(run / "tensorboard"))
        events.Reload()
        curves.append([(e.step, e.value) for e in events.Scalars("reward/mean")])
    assert [step for step, _ in curves[1]] == list(range(1, 7))
    assert curves[1] == curves[0]
