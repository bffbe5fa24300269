"""The replay buffer between the rollout and training phases (SPEC §8).

It holds three kinds of trajectories:

- `finished`: scored, ready to train. The trainer takes them all once (`take`); shuffling into
  mini-batches is the trainer's job.
- `unfinished`: partial rollouts (finish reason None) waiting to be continued in a later
  iteration by the then-current policy (`rollout/partial.py`).
- `waiting`: finished but not yet scored, because a sibling of their group of k is still
  unfinished; a group is scored and trained only when all its k samples are finished.

Memory is bounded: at most `max_unfinished` unfinished trajectories. When an addition would
exceed it, whole groups are dropped (a group's baseline needs all k samples), the groups whose
oldest segment is oldest first (`drop_policy="oldest"`) or the groups just added
(`drop_policy="newest"`). Everything is part of the run's checkpoint (`state_dict`), so a resumed
run loses nothing, unfinished trajectories included.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from longrl.types import Trajectory


def start_version(t: Trajectory) -> int:
    """The policy version that sampled the trajectory's first segment."""
    return t.segments[0].policy_version if t.segments else 0


class ReplayBuffer:
    def __init__(self, max_unfinished: int = 1 << 30, drop_policy: Literal["oldest", "newest"] = "oldest") -> None:
        if drop_policy not in ("oldest", "newest"):
            raise ValueError(f"unknown drop_policy {drop_policy!r}: use 'oldest' or 'newest'")
        self.max_unfinished, self.drop_policy = max_unfinished, drop_policy
        self.finished: list[Trajectory] = []
        self.unfinished: list[Trajectory] = []
        self.waiting: list[Trajectory] = []
        self.dropped = 0  # trajectories dropped for room, over the run

    def add(self, trajectories: Sequence[Trajectory]) -> None:
        """Finished + scored -> `finished`; unfinished -> `unfinished`; finished unscored -> `waiting`."""
        added = set()
        for t in trajectories:
            if t.finish_reason is None:
                self.unfinished.append(t)
                added.add(t.group_key)
            elif t.reward is None:
                self.waiting.append(t)
            else:
                self.finished.append(t)
        self._enforce_bound(added)

    def _enforce_bound(self, added: set[str]) -> None:
        while len(self.unfinished) > self.max_unfinished:
            if self.drop_policy == "newest" and added:
                victim = added.pop()
            else:
                victim = min(self.unfinished, key=start_version).group_key
            self.drop_groups({victim})

    def drop_groups(self, keys: set[str]) -> int:
        """Remove every unfinished or waiting member of these groups; return how many."""
        before = len(self.unfinished) + len(self.waiting)
        self.unfinished = [t for t in self.unfinished if t.group_key not in keys]
        self.waiting = [t for t in self.waiting if t.group_key not in keys]
        n = before - len(self.unfinished) - len(self.waiting)
        self.dropped += n
        return n

    def take_unfinished(self) -> list[Trajectory]:
        """All unfinished trajectories, oldest first, removed from the buffer."""
        out = sorted(self.unfinished, key=start_version)
        self.unfinished = []
        return out

    def take_complete_groups(self) -> list[Trajectory]:
        """Waiting trajectories whose group has no unfinished member left, removed from the buffer."""
        open_groups = {t.group_key for t in self.unfinished}
        out = [t for t in self.waiting if t.group_key not in open_groups]
        self.waiting = [t for t in self.waiting if t.group_key in open_groups]
        return out

    def take(self) -> list[Trajectory]:
        """All finished trajectories, removed from the buffer."""
        out, self.finished = self.finished, []
        return out

    def __len__(self) -> int:
        return len(self.finished)

    def metrics(self) -> dict[str, float]:
        return {"buffer/finished": float(len(self.finished)),
                "buffer/unfinished": float(len(self.unfinished)),
                "buffer/waiting": float(len(self.waiting)),
                "buffer/unfinished_tokens": float(sum(t.num_response_tokens for t in self.unfinished)),
                "buffer/dropped_total": float(self.dropped)}

    def state_dict(self) -> dict[str, Any]:
        return {"finished": list(self.finished), "unfinished": list(self.unfinished),
                "waiting": list(self.waiting), "dropped": self.dropped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.finished = list(state["finished"])
        self.unfinished = list(state.get("unfinished", []))
        self.waiting = list(state.get("waiting", []))
        self.dropped = state.get("dropped", 0)
