"""The reward seam: a name -> batched reward function registry (SPEC §6).

A reward is any callable `(prompts, responses) -> list[RewardResult]` over equal-length lists,
where `responses` are decoded response texts. Rewards are registered under a name and combined
with weights by `score_batch`, which is the only place the loop calls them. A reward that raises
never stops the loop: `score_batch` records a zero with the exception as the reason, first for
the whole batch call, then, to lose as little as possible, by re-scoring each item alone.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from typing import Protocol

from longrl.types import Prompt, RewardResult


class Reward(Protocol):
    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[RewardResult]: ...


_REGISTRY: dict[str, Callable[..., Reward]] = {}


def register_reward(name: str):
    """Register a reward factory: `factory(**options) -> Reward`. Used as a decorator."""

    def wrap(factory: Callable[..., Reward]) -> Callable[..., Reward]:
        if name in _REGISTRY:
            raise ValueError(f"reward {name!r} is registered twice")
        _REGISTRY[name] = factory
        return factory

    return wrap


def _import_builtin_rewards() -> None:
    # Importing a reward module registers it; optional ones need their extras installed.
    import longrl.data.worlds  # noqa: F401  (registers "world")

    for module in ("longrl.rewards.math", "longrl.rewards.code", "longrl.rewards.gym"):
        try:
            __import__(module)
        except ImportError:
            pass


def available_rewards() -> list[str]:
    _import_builtin_rewards()
    return sorted(_REGISTRY)


def get_reward(name: str, **options) -> Reward:
    _import_builtin_rewards()
    if name not in _REGISTRY:
        raise KeyError(f"unknown reward {name!r}; registered rewards: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](**options)


def _error_result(exc: BaseException) -> RewardResult:
    reason = f"{type(exc).__name__}: {exc}"
    return RewardResult(0.0, {"error": reason, "traceback": traceback.format_exc(limit=3)})


def _safe_call(reward: Reward, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[RewardResult]:
    try:
        results = reward(prompts, responses)
        if len(results) != len(prompts):
            raise ValueError(f"returned {len(results)} results for {len(prompts)} responses")
        return results
    except Exception as exc:  # noqa: BLE001 - a reward must never stop the loop
        if len(prompts) == 1:
            return [_error_result(exc)]
        return [_safe_call(reward, [p], [r])[0] for p, r in zip(prompts, responses)]


def score_batch(
    rewards: dict[str, tuple[Reward, float]], prompts: Sequence[Prompt], responses: Sequence[str]
) -> list[RewardResult]:
    """Score every response with every named reward; the score is the weighted sum.

    `info` holds each part's score under its name and, for a part that failed, its error under
    `"<name>/error"`.
    """
    totals = [RewardResult(0.0, {}) for _ in prompts]
    for name, (reward, weight) in rewards.items():
        for total, part in zip(totals, _safe_call(reward, prompts, responses)):
            total.score += weight * float(part.score)
            total.info[name] = float(part.score)
            for key, value in part.info.items():
                total.info[f"{name}/{key}"] = value
    return totals
