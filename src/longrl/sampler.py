"""Prompt samplers (SPEC §5, paper §2.3.4): which prompts each RL iteration trains on.

A sampler hands out the prompts of an iteration (`sample`, called one or more times), sees that
iteration's scored trajectories afterwards (`update`, called exactly once per iteration, on the
task reward before any length or repetition shaping), and checkpoints its whole state (RNG,
success rates, phase, position) so a resumed run draws exactly what the uninterrupted run would.

Two questions, answered by two parts that compose:

    which prompts may be drawn now   a curriculum: phases in order, each a filter of the pool
    how to draw among them           uniform, or prioritized by success rate

`CurriculumSampler` wraps a pool sampler (uniform or prioritized) and narrows its pool
(`set_pool`) when a phase begins; the inner sampler draws within that pool.

Uniform. Each prompt of the pool once per epoch, in an order reshuffled every epoch (seeded by
`seed` and the epoch number). A new pool (a new curriculum phase) starts a new epoch.

Curriculum. Phase j lasts L_j iterations (the last one until the end of the run) and admits the
prompts with difficulty in [lo_j, hi_j] and, when it names tags, at least one of those tags.
Iterations are counted by `update` calls, so phase j covers iterations L_0 + .. + L_{j-1} up to
(not including) L_0 + .. + L_j. The paper's ablation (Fig. 9) is the preset `warmup_then_hard`:
all prompts for W iterations, then only the prompts with difficulty >= h. A prompt without a
difficulty label is admitted only by phases whose range is the whole [0, 1]: the preset's warm-up
takes it, its hard phase does not. A phase that admits no prompt is an error at set-up.

Prioritized. Prompt i is drawn with probability

    p_i = w_i / Σ_j w_j,   w_i = max(1 − s_i, ε)

over the current pool, where s_i is the success rate of prompt i: the share of its sampled
responses whose reward reaches 1 (correct, as in `evaluate`). With `ema = 0`, s_i is the mean
over every response sampled for it so far; with `ema = α > 0`, s_i ← (1 − α) s_i + α c/m after an
iteration in which c of its m responses were correct (the first observation is taken as is).
A prompt never sampled has s_i = `prior`. One `sample(n)` call draws without replacement
(successive sampling: numpy's weighted `Generator.choice`), so the first prompt of a call has
exactly probability p_i; a call larger than the pool takes all of it and draws the rest anew.

Deviations from the paper: the floor ε (a solved prompt is still revisited now and then), the
prior for unseen prompts and the optional moving average are ours. Success rates are kept per
`Prompt.id`: duplicate entries of one problem in the pool share a rate, and each entry is a
candidate, so a pool's multiplicities act as base weights (as they do for uniform sampling).

Metrics (`sampler/...`, about the prompts drawn since the previous `update`): `pool_size`,
`mean_difficulty` and `hard_share` (difficulty >= `hard_threshold`; labelled prompts only),
`distinct_seen` (distinct prompt ids ever drawn), `epoch` (uniform), `phase` (curriculum),
`mean_success_sampled` (their s_i when drawn), `tracked` and `mean_success` (prioritized).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from longrl.config import SamplerConfig
from longrl.types import Prompt, Trajectory

CORRECT = 1.0  # a response is correct when its task reward reaches this


class Sampler(Protocol):
    def sample(self, n: int) -> list[Prompt]: ...

    def update(self, trajectories: Sequence[Trajectory]) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class PoolSampler(Sampler, Protocol):
    """A sampler whose pool a curriculum can narrow to some of its prompts."""

    pool: list[Prompt]

    def set_pool(self, indices: Sequence[int] | None) -> None: ...


def _check_pool(pool: Sequence[Prompt]) -> list[Prompt]:
    if not pool:
        raise ValueError("the prompt pool is empty: check the data file or world config")
    return list(pool)


class _DrawLog:
    """What was drawn: the pool indices since the last `update`, and every prompt id ever drawn."""

    def __init__(self, hard_threshold: float):
        self.hard_threshold = hard_threshold
        self.pending: list[int] = []
        self.seen: set[str] = set()

    def record(self, pool: list[Prompt], indices: Sequence[int]) -> None:
        self.pending += indices
        self.seen.update(pool[i].id for i in indices)

    def flush(self, pool: list[Prompt]) -> tuple[list[int], dict[str, float]]:
        """The indices drawn since the last flush, and their metrics; starts a new record."""
        drawn, self.pending = self.pending, []
        metrics = {"sampler/distinct_seen": float(len(self.seen))}
        labelled = [pool[i].difficulty for i in drawn if pool[i].difficulty is not None]
        if labelled:
            metrics["sampler/mean_difficulty"] = sum(labelled) / len(labelled)
            metrics["sampler/hard_share"] = sum(d >= self.hard_threshold for d in labelled) / len(labelled)
        return drawn, metrics

    def state_dict(self) -> dict[str, Any]:
        return {"pending": list(self.pending), "seen": sorted(self.seen)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pending, self.seen = list(state["pending"]), set(state["seen"])


# ----------------------------------------------------------------------------------------------
# How to draw: uniform and prioritized
# ----------------------------------------------------------------------------------------------


class UniformSampler:
    """Each prompt of the pool once per epoch, in an order reshuffled every epoch."""

    def __init__(self, pool: Sequence[Prompt], seed: int = 0, hard_threshold: float = 0.5):
        self.pool, self.seed = _check_pool(pool), seed
        self.active: list[int] | None = None  # pool indices that may be drawn; None = all
        self.epoch, self.position = 0, 0
        self.log = _DrawLog(hard_threshold)
        self._order = self._shuffled(0)

    def _shuffled(self, epoch: int) -> list[int]:
        order = list(range(len(self.pool))) if self.active is None else list(self.active)
        random.Random(f"{self.seed}:{epoch}").shuffle(order)
        return order

    def set_pool(self, indices: Sequence[int] | None) -> None:
        if indices is not None and not indices:
            raise ValueError("set_pool: no prompt to draw from")
        self.active = None if indices is None else list(indices)
        self.epoch, self.position = self.epoch + 1, 0
        self._order = self._shuffled(self.epoch)

    def sample(self, n: int) -> list[Prompt]:
        drawn = []
        while len(drawn) < n:
            if self.position == len(self._order):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._shuffled(self.epoch)
            drawn.append(self._order[self.position])
            self.position += 1
        self.log.record(self.pool, drawn)
        return [self.pool[i] for i in drawn]

    def update(self, trajectories: Sequence[Trajectory]) -> dict[str, float]:
        _, metrics = self.log.flush(self.pool)
        return metrics | {"sampler/epoch": float(self.epoch), "sampler/pool_size": float(len(self._order))}

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "active": self.active,
                "log": self.log.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self.active = state.get("active")
        if "log" in state:
            self.log.load_state_dict(state["log"])
        self._order = self._shuffled(self.epoch)


class PrioritizedSampler:
    """p_i ∝ max(1 − s_i, floor) over the pool, without replacement within a call."""

    def __init__(self, pool: Sequence[Prompt], seed: int = 0, floor: float = 0.05, prior: float = 0.5,
                 ema: float = 0.0, hard_threshold: float = 0.5):
        if not 0 < floor <= 1 or not 0 <= prior <= 1 or not 0 <= ema <= 1:
            raise ValueError(f"prioritized sampler: need 0 < floor <= 1, 0 <= prior <= 1 and "
                             f"0 <= ema <= 1, got floor={floor}, prior={prior}, ema={ema}")
        self.pool = _check_pool(pool)
        self.floor, self.prior, self.ema = floor, prior, ema
        self.active: list[int] | None = None
        self.rng = np.random.default_rng(seed)
        self.success: dict[str, tuple[float, int]] = {}  # prompt id -> (s_i, responses counted)
        self.log = _DrawLog(hard_threshold)

    def _indices(self) -> list[int]:
        return list(range(len(self.pool))) if self.active is None else self.active

    def set_pool(self, indices: Sequence[int] | None) -> None:
        if indices is not None and not indices:
            raise ValueError("set_pool: no prompt to draw from")
        self.active = None if indices is None else list(indices)

    def success_rate(self, prompt: Prompt) -> float:
        """s_i: the tracked success rate, or the prior for a prompt never sampled."""
        tracked = self.success.get(prompt.id)
        return self.prior if tracked is None else tracked[0]

    def probabilities(self) -> tuple[list[int], np.ndarray]:
        """The current pool's indices and p_i of drawing each one first."""
        indices = self._indices()
        weights = np.array([max(1.0 - self.success_rate(self.pool[i]), self.floor) for i in indices])  # [P]
        return indices, weights / weights.sum()

    def sample(self, n: int) -> list[Prompt]:
        indices, p = self.probabilities()
        drawn: list[int] = []
        while len(drawn) < n:
            take = min(n - len(drawn), len(indices))
            drawn += [indices[j] for j in self.rng.choice(len(indices), size=take, replace=False, p=p)]
        self.log.record(self.pool, drawn)
        return [self.pool[i] for i in drawn]

    def update(self, trajectories: Sequence[Trajectory]) -> dict[str, float]:
        drawn, metrics = self.log.flush(self.pool)
        if drawn:  # their success rates as they were when drawn
            rates = [self.success_rate(self.pool[i]) for i in drawn]
            metrics["sampler/mean_success_sampled"] = sum(rates) / len(rates)
        outcomes: dict[str, list[int]] = {}  # prompt id -> [correct, responses]
        for t in trajectories:
            counts = outcomes.setdefault(t.prompt.id, [0, 0])
            counts[0] += t.reward is not None and t.reward >= CORRECT
            counts[1] += 1
        for prompt_id, (correct, m) in outcomes.items():
            self.success[prompt_id] = self._updated(self.success.get(prompt_id), correct, m)
        metrics["sampler/tracked"] = float(len(self.success))
        if self.success:
            metrics["sampler/mean_success"] = sum(s for s, _ in self.success.values()) / len(self.success)
        return metrics | {"sampler/pool_size": float(len(self._indices()))}

    def _updated(self, tracked: tuple[float, int] | None, correct: int, m: int) -> tuple[float, int]:
        if tracked is None:
            return correct / m, m
        s, n = tracked
        if self.ema == 0:
            return (s * n + correct) / (n + m), n + m
        return (1 - self.ema) * s + self.ema * correct / m, n + m

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "active": self.active,
                "success": {k: list(v) for k, v in self.success.items()}, "log": self.log.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.active = state["active"]
        self.success = {k: (float(s), int(n)) for k, (s, n) in state["success"].items()}
        self.log.load_state_dict(state["log"])


# ----------------------------------------------------------------------------------------------
# What may be drawn when: the curriculum
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Phase:
    """One curriculum phase: its length and the prompts it admits."""

    iterations: int
    min_difficulty: float = 0.0
    max_difficulty: float = 1.0
    tags: tuple[str, ...] = ()  # a prompt needs at least one of them; () = no tag filter

    def admits(self, prompt: Prompt) -> bool:
        if self.tags and not set(self.tags) & set(prompt.tags):
            return False
        if prompt.difficulty is None:  # unlabelled: only phases that do not filter by difficulty
            return self.min_difficulty <= 0.0 and self.max_difficulty >= 1.0
        return self.min_difficulty <= prompt.difficulty <= self.max_difficulty

    def describe(self) -> str:
        tags = f", tags any of {list(self.tags)}" if self.tags else ""
        return f"difficulty in [{self.min_difficulty:g}, {self.max_difficulty:g}]{tags}"


def warmup_then_hard(warmup_iterations: int, hard_threshold: float) -> list[Phase]:
    """The paper's curriculum ablation (Fig. 9): all prompts, then only the hard ones."""
    hard = Phase(0, min_difficulty=hard_threshold)
    return [Phase(warmup_iterations), hard] if warmup_iterations > 0 else [hard]


class CurriculumSampler:
    """Phases in order; each narrows the inner sampler's pool to the prompts it admits."""

    def __init__(self, inner: PoolSampler, phases: Sequence[Phase]):
        if not phases:
            raise ValueError("a curriculum needs at least one phase")
        self.inner, self.phases = inner, list(phases)
        self.pools = [[i for i, p in enumerate(inner.pool) if phase.admits(p)] for phase in self.phases]
        unlabelled = sum(p.difficulty is None for p in inner.pool)
        for j, (phase, pool) in enumerate(zip(self.phases, self.pools)):
            if not pool:
                raise ValueError(
                    f"curriculum phase {j} ({phase.describe()}) admits none of the {len(inner.pool)} "
                    f"training prompts ({unlabelled} have no difficulty label): widen its range "
                    "(sampler.hard_threshold or sampler.phase_*_difficulty) or its tags, "
                    "or label the prompts")
        self.iteration = 0
        self.phase = self.phase_at(0)
        inner.set_pool(self.pools[self.phase])

    def phase_at(self, iteration: int) -> int:
        end = 0
        for j, phase in enumerate(self.phases[:-1]):
            end += phase.iterations
            if iteration < end:
                return j
        return len(self.phases) - 1

    def sample(self, n: int) -> list[Prompt]:
        return self.inner.sample(n)

    def update(self, trajectories: Sequence[Trajectory]) -> dict[str, float]:
        metrics = self.inner.update(trajectories) | {"sampler/phase": float(self.phase)}
        self.iteration += 1
        phase = self.phase_at(self.iteration)
        if phase != self.phase:
            self.phase = phase
            self.inner.set_pool(self.pools[phase])
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"iteration": self.iteration, "phase": self.phase, "inner": self.inner.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.iteration, self.phase = state["iteration"], state["phase"]
        self.inner.load_state_dict(state["inner"])  # holds the phase's pool


# ----------------------------------------------------------------------------------------------
# From config
# ----------------------------------------------------------------------------------------------


def phases_from_config(config: SamplerConfig) -> list[Phase]:
    if config.curriculum == "warmup_then_hard":
        return warmup_then_hard(config.warmup_iterations, config.hard_threshold)
    tags = config.phase_tags or [[] for _ in config.phase_iterations]
    return [Phase(n, lo, hi, tuple(t)) for n, lo, hi, t in
            zip(config.phase_iterations, config.phase_min_difficulty, config.phase_max_difficulty, tags)]


def make_sampler(config: SamplerConfig, pool: Sequence[Prompt], seed: int) -> Sampler:
    """The sampler `config` describes over `pool`: uniform or prioritized, inside a curriculum or not."""
    if config.kind == "prioritized":
        inner: PoolSampler = PrioritizedSampler(pool, seed, config.floor, config.prior, config.ema,
                                                config.hard_threshold)
    else:
        inner = UniformSampler(pool, seed, config.hard_threshold)
    if config.curriculum == "none":
        return inner
    return CurriculumSampler(inner, phases_from_config(config))
