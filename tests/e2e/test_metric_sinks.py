"""Metrics where people look: Weights & Biases offline beside `metrics.jsonl`, across a resume.

The offline run file (`run-<id>.wandb`) is read back record by record, so the test checks what
W&B would upload, not only that a file was written.
"""

import json
import struct

import pytest

from longrl.cli import main

wandb = pytest.importorskip("wandb")  # installed by scripts/setup.sh

RUN = ["iterations=2", "world.tasks=['add']", "world.min_level=1", "world.max_level=1", "world.eval_size=4",
       "rollout.prompts_per_iter=2", "rollout.samples_per_prompt=2", "rollout.max_new_tokens=8",
       "train.mini_batch_size=4", "train.row_tokens=64", "eval.every=2", "eval.num_prompts=4",
       "eval.n_samples=1", "eval.max_new_tokens=8", "checkpoint_every=1", "checkpoint_keep=0",
       "logging.wandb=true", "logging.wandb_project=sinks", "logging.tensorboard=false"]


def _history(path) -> list[dict[str, float]]:
    """The history rows of an offline W&B run file: a LevelDB-style log of 32 KiB blocks, each
    record a 7-byte header (checksum, length, kind: 1 whole, 2 first, 3 middle, 4 last piece)
    and a protobuf `Record`. Written here because wandb 0.31 no longer ships a reader."""
    from wandb.proto import wandb_internal_pb2

    raw, pos, piece, rows = path.read_bytes(), 7, b"", []  # 7: the file header
    while pos + 7 <= len(raw):
        room = 32768 - pos % 32768
        _, length, kind = struct.unpack("<IHB", raw[pos:pos + 7]) if room >= 7 else (0, 0, 0)
        if room < 7 or (length == 0 and kind == 0):  # block padding
            pos += room
            continue
        piece += raw[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(piece)
            piece = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
    return rows


def test_wandb_offline_gets_each_iteration_and_a_resume_continues_the_same_run(tmp_path, tiny_model_dir,
                                                                                 monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    assert main(["train", f"out_dir={tmp_path}", "name=run", f"model.path={tiny_model_dir}", "--no-progress", *RUN]) == 0
    run = tmp_path / "run"
    assert not (run / "tensorboard").exists()  # logging.tensorboard = false
    run_id = (run / "wandb" / "run_id").read_text().strip()
    (first,) = (run / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
    logged = {row["_step"]: row for row in _history(first)}
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert sorted(logged) == [m["iteration"] for m in metrics] == [0, 1, 2]
    for m in metrics:  # the same numbers at the same step
        for key, value in m.items():
            if key != "iteration" and value is not None:
                assert logged[m["iteration"]][key] == pytest.approx(value), key

    # resumed to a longer run: the same W&B run goes on from the checkpoint
    assert main(["train", "--resume", str(run), "--no-progress", "iterations=3"]) == 0
    files = sorted((run / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    resumed = {row["_step"]: row for f in files for row in _history(f) if f != first}
    assert 3 in resumed and "reward/mean" in resumed[3] and "eval/pass@1" in resumed[3]


def test_wandb_without_the_package_is_a_clear_error(tmp_path, tiny_model_dir, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    assert main(["train", f"out_dir={tmp_path}", "name=run", f"model.path={tiny_model_dir}", "--no-progress", *RUN]) != 0
    assert "logging.wandb = true needs the wandb package: pip install wandb" in capsys.readouterr().err
