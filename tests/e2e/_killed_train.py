"""`longrl train ...` that kills itself with SIGKILL at one point, as a crash or `kill -9` would.

    python _killed_train.py STAGE N  train ARGS...

STAGE is where: `rollout` (an iteration's responses sampled, not yet scored), `train` (the
policy updated in memory, not yet synced or saved), `checkpoint` (the model written into the
checkpoint's directory, the rest not) or `eval` (an evaluation finished, not yet logged); N is
which call of that stage in this process dies. The kill is the real signal: nothing of the
process's own clean-up runs.
"""

import os
import signal
import sys

from longrl import loop
from longrl.cli import main
from longrl.trainer import Trainer


def kill_on_call(owner, name: str, n: int) -> None:
    original, calls = getattr(owner, name), [0]

    def wrapped(*args, **kwargs):
        out = original(*args, **kwargs)
        calls[0] += 1
        if calls[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    setattr(owner, name, wrapped)


if __name__ == "__main__":
    stage, n, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    owner, name = {"rollout": (loop, "sample"), "train": (Trainer, "train_iteration"),
                   "checkpoint": (Trainer, "save_pretrained"), "eval": (loop, "run_eval")}[stage]
    kill_on_call(owner, name, n)
    sys.exit(main(argv))
