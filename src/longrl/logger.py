"""Metric sinks: one flat dict of namespaced metrics per iteration (`reward/mean`, `eval/pass@1`).

`metrics.jsonl` gets one JSON object per iteration (always), TensorBoard a scalar per key
(`logging.tensorboard`), Weights & Biases the same dict at the same step (`logging.wandb`), and a
progress bar shows the few numbers a person watches. `run_sinks` builds the configured ones.

On resume every sink holds each iteration once: `checkpoint.cut_logs` cuts `metrics.jsonl`, and
TensorBoard purges the steps after the checkpoint. W&B cannot drop logged steps: the resumed run
continues the same W&B run (its id is kept in `<run>/wandb/run_id`), and the steps between the
checkpoint and the kill are logged again, and W&B ignores a step at or below the last one it
recorded, so those few steps keep the killed run's values there (`metrics.jsonl` and TensorBoard
hold the resumed run's).
"""

from __future__ import annotations

import json
import math
import secrets
from pathlib import Path
from typing import Any, Protocol

from longrl.errors import LongrlError


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


class WandbLogger:
    """Weights & Biases: the metrics of each iteration at `step`, the run's settings as its config."""

    def __init__(self, run_dir: Path, name: str, settings: dict[str, Any], logging) -> None:
        try:
            import wandb
        except ImportError:
            raise LongrlError("logging.wandb = true needs the wandb package: pip install wandb "
                              "(or set logging.wandb = false)") from None
        root = run_dir / "wandb"
        root.mkdir(parents=True, exist_ok=True)
        id_file = root / "run_id"
        if not id_file.is_file():  # one W&B run per longrl run, resumes included
            id_file.write_text(secrets.token_hex(4) + "\n")
        self.run = wandb.init(
            project=logging.wandb_project, entity=logging.wandb_entity or None,
            name=logging.wandb_name or name, tags=list(logging.wandb_tags) or None, config=settings,
            dir=str(run_dir), mode=logging.wandb_mode or None, id=id_file.read_text().strip(), resume="allow")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)

    def close(self) -> None:
        self.run.finish()


def run_sinks(run_dir: Path, name: str, settings: dict[str, Any], logging, resumed_at: int) -> list[MetricLogger]:
    """The sinks `logging` asks for; `resumed_at` is the checkpoint's iteration (0 for a new run)."""
    sinks: list[MetricLogger] = [JsonlLogger(run_dir / "metrics.jsonl")]
    if logging.tensorboard:
        sinks.append(TensorBoardLogger(run_dir / "tensorboard", purge_step=resumed_at + 1 if resumed_at else 0))
    if logging.wandb:
        sinks.append(WandbLogger(run_dir, name, settings, logging))
    return sinks


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
