"""The RL loop on a Ray cluster (SPEC §8, infrastructure; docs/cluster.md).

The driver process is the master: it runs `loop.iteration` unchanged, stage by stage. Only the
objects behind the run's engine, trainer, rewards and weight sync are remote:

    run.engine   EnginePool      rollout actors, each holding an engine (`pool.py`)
    run.rewards  remote rewards  reward actors calling `rewards.score.score_batch` (`rewards.py`)
    run.trainer  TrainerGroup    trainer-rank actors in one torch.distributed group (`trainer_group.py`)
    run.sync     ClusterSync     weights from the trainer to every engine, then the probe check
                                 on every engine (`sync.py`)

Faults: a dead rollout actor is restarted, given the current weights, checked, and its requests
are issued again; a dead reward actor is restarted and its chunk scored again, once; a dead
trainer rank stops the run with `TrainerRankError` naming the rank (resume with `--resume`).

`ray` is an optional extra: importing this package without it raises `MissingExtraError`.
"""

from __future__ import annotations

from longrl.errors import MissingExtraError

try:
    import ray  # noqa: F401
except ModuleNotFoundError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingExtraError("cluster.enabled = true needs Ray, which is not installed: run "
                            "pip install 'longrl[ray]'") from exc

from longrl.cluster.errors import ClusterError, TrainerRankError  # noqa: E402 - after the check
from longrl.cluster.setup import Cluster, setup_cluster  # noqa: E402

__all__ = ["Cluster", "ClusterError", "TrainerRankError", "setup_cluster"]
