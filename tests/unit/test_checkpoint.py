"""Crash-safe checkpoints (`longrl.checkpoint`): atomic in place, kept K, a full disk refused cleanly."""

import errno
import json
import os
import subprocess
import uuid

import pytest

from longrl import checkpoint
from longrl.checkpoint import CheckpointError


def _writer(size: int = 10, fail: OSError | None = None):
    def write(path):
        (path / "model.bin").write_bytes(os.urandom(size))
        if fail is not None:
            raise fail
        (path / "state.pt").write_text("state")

    return write


def test_a_checkpoint_is_marked_complete_and_the_newest_k_are_kept(tmp_path):
    for i in (2, 4, 6):
        path = checkpoint.save(tmp_path, i, _writer(), keep=2)
        assert path == tmp_path / str(i) and checkpoint.is_complete(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["4", "6"]
    assert checkpoint.latest(tmp_path) == tmp_path / "6"
    assert json.loads((tmp_path / "6" / checkpoint.MARKER).read_text()) == {"iteration": 6}


def test_keep_zero_keeps_every_checkpoint(tmp_path):
    for i in range(1, 5):
        checkpoint.save(tmp_path, i, _writer(), keep=0)
    assert [p.name for p in checkpoint.complete(tmp_path)] == ["1", "2", "3", "4"]


def test_an_unmarked_or_partial_directory_is_never_resumed_from_and_is_cleared(tmp_path):
    checkpoint.save(tmp_path, 2, _writer())
    (tmp_path / "4").mkdir()  # written in place by a killed writer: no marker
    (tmp_path / "4" / "model.bin").write_bytes(b"half")
    (tmp_path / ".partial-6").mkdir()
    assert checkpoint.latest(tmp_path) == tmp_path / "2"
    checkpoint.remove_partial(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2"]


def test_resaving_an_iteration_replaces_it_and_a_kill_in_the_swap_loses_nothing(tmp_path):
    checkpoint.save(tmp_path, 2, _writer())
    checkpoint.save(tmp_path, 2, _writer(size=20))
    assert (tmp_path / "2" / "model.bin").stat().st_size == 20
    # killed between setting the old one aside and renaming the new one in: the old one comes back
    (tmp_path / "2").rename(tmp_path / ".partial-2.old")
    (tmp_path / ".partial-2").mkdir()
    checkpoint.remove_partial(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2"] and checkpoint.is_complete(tmp_path / "2")


def test_a_failed_write_names_the_checkpoint_and_leaves_the_previous_intact(tmp_path):
    checkpoint.save(tmp_path, 2, _writer())
    before = (tmp_path / "2" / "model.bin").read_bytes()
    with pytest.raises(CheckpointError, match=r"4: checkpoint of iteration 4 not written \(the disk is full\); "
                                              r"checkpoint .*2 is intact"):
        checkpoint.save(tmp_path, 4, _writer(fail=OSError(errno.ENOSPC, "No space left on device")), keep=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2"]
    assert (tmp_path / "2" / "model.bin").read_bytes() == before


@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MiB tmpfs; skipped where this process may not mount one (not root, no CAP_SYS_ADMIN)."""
    where = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    where.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield where
    subprocess.run(["umount", str(where)], check=True)


def test_a_full_disk_is_a_clear_error_and_the_previous_checkpoint_stays(small_disk):
    checkpoint.save(small_disk, 1, _writer(size=400_000))
    with pytest.raises(CheckpointError, match="the disk is full.*1 is intact"):
        checkpoint.save(small_disk, 2, _writer(size=800_000))
    assert sorted(p.name for p in small_disk.iterdir()) == ["1"] and checkpoint.is_complete(small_disk / "1")
    assert (small_disk / "1" / "model.bin").stat().st_size == 400_000
    checkpoint.save(small_disk, 2, _writer(size=400_000), keep=1)  # room again once the partial one went


def test_cut_logs_drops_rows_and_samples_after_the_checkpoint_and_a_torn_last_line(tmp_path):
    rows = [json.dumps({"iteration": i, "reward/mean": i / 10}) for i in range(6)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(rows) + '\n{"iteration": 6, "rew')
    (tmp_path / "samples").mkdir()
    for i in range(1, 7):
        (tmp_path / "samples" / f"iter_{i:06d}.jsonl").write_text("{}\n")
    checkpoint.cut_logs(tmp_path, 3)
    kept = [json.loads(line)["iteration"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert kept == [0, 1, 2, 3]
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == [f"iter_{i:06d}.jsonl" for i in (1, 2, 3)]


def test_a_run_stops_on_a_full_disk_with_one_line_naming_the_checkpoint(tmp_path, tiny_model_dir, monkeypatch, capsys):
    import torch

    from longrl.cli import main

    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):  # the second checkpoint's trainer state hits a full disk
        if isinstance(f, (str, os.PathLike)):  # not the in-memory saves of the sharded optimizer state
            calls.append(f)
        if len(calls) == 2 and calls[-1] is f:
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    args = ["train", f"out_dir={tmp_path}", "name=rl", f"model.path={tiny_model_dir}", "--no-progress",
            "iterations=2", "checkpoint_every=1", "world.train_size=8", "world.eval_size=2",
            "rollout.prompts_per_iter=2", "rollout.samples_per_prompt=2", "rollout.max_new_tokens=4",
            "train.mini_batch_size=4", "train.row_tokens=64", "eval.num_prompts=2", "eval.n_samples=1",
            "eval.max_new_tokens=2"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checkpoint of iteration 2 not written (the disk is full)" in err[0], err
    assert sorted(p.name for p in (tmp_path / "rl" / "checkpoints").iterdir()) == ["1"]
    monkeypatch.setattr(torch, "save", real_save)
    assert main(["train", "--resume", str(tmp_path / "rl"), "--no-progress"]) == 0  # room again: it resumes
    assert checkpoint.latest(tmp_path / "rl" / "checkpoints") == tmp_path / "rl" / "checkpoints" / "2"


def test_max_train_s_stops_the_run_like_its_last_iteration(tmp_path, tiny_model_dir):
    from longrl.cli import main

    args = ["train", f"out_dir={tmp_path}", "name=rl", f"model.path={tiny_model_dir}", "--no-progress",
            "iterations=1000", "max_train_s=1e-6", "eval.every=0", "world.train_size=8", "world.eval_size=2",
            "rollout.prompts_per_iter=2", "rollout.samples_per_prompt=2", "rollout.max_new_tokens=4",
            "train.mini_batch_size=4", "train.row_tokens=64", "eval.num_prompts=2", "eval.n_samples=1",
            "eval.max_new_tokens=2"]
    assert main(args) == 0
    rows = [json.loads(line) for line in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1]  # the start evaluation, then one iteration
    assert "eval/pass@1" in rows[-1]  # evaluated at the stop, as after a last iteration
    assert checkpoint.latest(tmp_path / "rl" / "checkpoints") == tmp_path / "rl" / "checkpoints" / "1"
    assert (tmp_path / "rl" / "final" / "config.json").exists()
