"""Metric sinks: one flat dict of namespaced metrics per iteration (`reward/mean`, `eval/pass@1`).

`metrics.jsonl` gets one JSON object per iteration, TensorBoard gets a scalar per key, and a
progress bar shows the few numbers a person watches.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Protocol


class MetricLogger(Protocol):
    def log(self, step: int, metrics: dict[str, float]) -> None: ...

    def close(self) -> None: ...


class JsonlLogger:
    def __init__(self, path: Path):
        """Append to `path` (a resumed run's rows after its checkpoint are cut first: `checkpoint.cut_logs`)."""
        self.file = path.open("a")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
        self.file.write(json.dumps({"iteration": step, **clean}) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class TensorBoardLogger:
    def __init__(self, log_dir: Path, purge_step: int = 0):
        """`purge_step` > 0 (a resumed run): TensorBoard drops the events at that step and later
        that an earlier, killed writer left, so each step is shown once."""
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step or None)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            if isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class ProgressBar:
    """A live bar: iteration, reward, accuracy, mean length, tokens/s."""

    def __init__(self, total: int, initial: int = 0, disable: bool = False):
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=initial, desc="rl", unit="it", disable=disable, dynamic_ncols=True)
        self.last_eval: float | None = None

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.last_eval = metrics.get("eval/pass@1", self.last_eval)
        shown = {
            "reward": metrics.get("reward/mean"),
            "acc": metrics.get("reward/accuracy"),
            "eval": self.last_eval,
            "len": metrics.get("rollout/mean_tokens"),
            "tok/s": metrics.get("perf/rollout_tokens_per_s"),
        }
        self.bar.set_postfix({k: f"{v:.3g}" for k, v in shown.items() if v is not None}, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
