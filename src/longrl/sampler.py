"""Prompt samplers (SPEC §5). The uniform sampler: epochs over a shuffled pool.

A sampler hands out prompts for each iteration, sees the scored trajectories afterwards
(`update`, where prioritized sampling will learn success rates), and checkpoints its state so a
resumed run draws exactly what the uninterrupted run would have.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, Protocol

from longrl.types import Prompt, Trajectory


class Sampler(Protocol):
    def sample(self, n: int) -> list[Prompt]: ...

    def update(self, trajectories: Sequence[Trajectory]) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class UniformSampler:
    """Each prompt once per epoch, in an order reshuffled every epoch."""

    def __init__(self, pool: Sequence[Prompt], seed: int = 0):
        if not pool:
            raise ValueError("the prompt pool is empty: check the data file or world config")
        self.pool, self.seed = list(pool), seed
        self.epoch, self.position = 0, 0
        self._order = self._shuffled(0)

    def _shuffled(self, epoch: int) -> list[int]:
        order = list(range(len(self.pool)))
        random.Random(f"{self.seed}:{epoch}").shuffle(order)
        return order

    def sample(self, n: int) -> list[Prompt]:
        out = []
        while len(out) < n:
            if self.position == len(self._order):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._shuffled(self.epoch)
            out.append(self.pool[self._order[self.position]])
            self.position += 1
        return out

    def update(self, trajectories: Sequence[Trajectory]) -> dict[str, float]:
        return {"sampler/epoch": float(self.epoch)}

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self._order = self._shuffled(self.epoch)
