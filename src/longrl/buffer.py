"""The replay buffer between the rollout and training phases (SPEC §8).

It holds the iteration's scored trajectories until the trainer takes them. Finished
trajectories are trained on once and leave the buffer; the buffer's contents are part of the
run's checkpoint so a resumed run loses nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from longrl.types import Trajectory


class ReplayBuffer:
    def __init__(self) -> None:
        self.finished: list[Trajectory] = []

    def add(self, trajectories: Sequence[Trajectory]) -> None:
        for t in trajectories:
            if t.finish_reason is None or t.reward is None:
                raise ValueError("only finished, scored trajectories enter the buffer")
            self.finished.append(t)

    def take(self) -> list[Trajectory]:
        """All finished trajectories, removed from the buffer."""
        out, self.finished = self.finished, []
        return out

    def __len__(self) -> int:
        return len(self.finished)

    def metrics(self) -> dict[str, float]:
        return {"buffer/finished": float(len(self.finished))}

    def state_dict(self) -> dict[str, Any]:
        return {"finished": list(self.finished)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.finished = list(state["finished"])
