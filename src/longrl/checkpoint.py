"""Crash-safe checkpoints of a run directory: written aside, marked complete, renamed into place.

A checkpoint is the directory `checkpoints/<iteration>/`. It is written into a hidden sibling
(`checkpoints/.partial-<iteration>`), each file flushed to disk, then a marker file `COMPLETE` is
written and flushed, and only then is the directory renamed into place. A kill at any moment
leaves either the old set of checkpoints or the new one, plus perhaps a hidden partial directory
that nothing reads and the next save or resume removes. `latest` only ever returns a directory
whose marker exists, so a run never resumes from a half-written checkpoint (a directory without
the marker, e.g. from a version that wrote in place, is skipped).

A failed write (a full disk: `OSError` ENOSPC) removes the partial directory and raises a
`CheckpointError` saying which checkpoint failed and which one is still intact.

`cut_logs` trims what a killed run logged after its last checkpoint (`metrics.jsonl`,
`samples/iter_*.jsonl`), so a resumed run's logs hold each iteration once; TensorBoard events
are cut by the writer's `purge_step` (`logger.TensorBoardLogger`).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from longrl.errors import LongrlError

MARKER = "COMPLETE"
_PARTIAL, _OLD = ".partial-", ".old"


class CheckpointError(LongrlError):
    """A checkpoint could not be written; the earlier ones are untouched."""


def _fsync_tree(root: Path) -> None:
    """Flush every file under `root`, then the directories themselves (their entries)."""
    for path in root.rglob("*"):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())
    for directory in [*(p for p in root.rglob("*") if p.is_dir()), root]:
        _fsync_dir(directory)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_complete(path: Path) -> bool:
    return (path / MARKER).is_file()


def complete(checkpoints: Path) -> list[Path]:
    """The complete checkpoints under `checkpoints/`, oldest first."""
    if not checkpoints.is_dir():
        return []
    found = [p for p in checkpoints.iterdir() if p.name.isdigit() and is_complete(p)]
    return sorted(found, key=lambda p: int(p.name))


def latest(checkpoints: Path) -> Path | None:
    found = complete(checkpoints)
    return found[-1] if found else None


def remove_partial(checkpoints: Path) -> None:
    """Clear what interrupted saves left: hidden partial directories and unmarked checkpoints are
    deleted; a complete checkpoint set aside for a re-save of its iteration (`save`) that was
    killed before the new one took its place is put back."""
    if not checkpoints.is_dir():
        return
    for path in checkpoints.iterdir():
        if path.name.isdigit() and not is_complete(path):
            shutil.rmtree(path, ignore_errors=True)
    for path in checkpoints.iterdir():
        if path.name.startswith(_PARTIAL) and path.name.endswith(_OLD):
            original = checkpoints / path.name.removeprefix(_PARTIAL).removesuffix(_OLD)
            if not original.exists() and is_complete(path):
                path.rename(original)
                continue
        if path.name.startswith(_PARTIAL):
            shutil.rmtree(path, ignore_errors=True)


def save(checkpoints: Path, iteration: int, write: Callable[[Path], None], keep: int = 0) -> Path:
    """Write checkpoint `iteration` with `write(directory)`, atomically; keep the newest `keep`
    complete checkpoints (0 keeps all). Returns the checkpoint's directory."""
    checkpoints.mkdir(parents=True, exist_ok=True)
    remove_partial(checkpoints)
    final, partial = checkpoints / str(iteration), checkpoints / f"{_PARTIAL}{iteration}"
    previous = latest(checkpoints)
    try:
        partial.mkdir()
        write(partial)
        (partial / MARKER).write_text(json.dumps({"iteration": iteration}) + "\n")
        _fsync_tree(partial)
    except OSError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        kept = f"checkpoint {previous} is intact" if previous else "there is no earlier checkpoint"
        what = "the disk is full" if exc.errno == errno.ENOSPC else f"{exc.strerror or exc}"
        raise CheckpointError(f"{final}: checkpoint of iteration {iteration} not written ({what}); {kept}") from exc
    if final.exists():  # the same iteration saved again (a resumed run): swap, never a moment without one
        stale = checkpoints / f"{_PARTIAL}{iteration}{_OLD}"
        final.rename(stale)
        partial.rename(final)
        shutil.rmtree(stale, ignore_errors=True)
    else:
        partial.rename(final)
    _fsync_dir(checkpoints)
    if keep > 0:
        for old in complete(checkpoints)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def cut_logs(run_dir: Path, iteration: int) -> None:
    """Drop what the run logged after `iteration`: rows of `metrics.jsonl` and sample files."""
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        kept = []
        for line in metrics.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # the torn last line of a killed write
                continue
            if row.get("iteration", -1) <= iteration:
                kept.append(line)
        tmp = metrics.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(metrics)
    for sample in (run_dir / "samples").glob("iter_*.jsonl"):
        if int(sample.stem.removeprefix("iter_")) > iteration:
            sample.unlink()
