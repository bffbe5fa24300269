"""The one scoring path: trajectories + rewards -> rewards filled in, plus `reward/...` metrics.

Every command scores through `score` (or, for bare texts, `score_batch`). A reward that raises
never stops the caller: the batch call is retried item by item, so one bad response loses only
its own score, and a failing item is a recorded zero with the exception as its reason
(`info["<name>/error"]`).
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping, Sequence

from longrl.rewards.registry import Reward
from longrl.types import Prompt, RewardResult, Trajectory

Rewards = Mapping[str, tuple[Reward, float]]  # name -> (reward, weight)


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


def score_batch(rewards: Rewards, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[RewardResult]:
    """Score every response with every named reward; the score is the weighted sum.

    `info` holds each part's score under its name and each part's info keys as `<name>/<key>`
    (a failed part's error under `<name>/error`).
    """
    totals = [RewardResult(0.0, {}) for _ in prompts]
    for name, (reward, weight) in rewards.items():
        for total, part in zip(totals, _safe_call(reward, prompts, responses)):
            total.score += weight * float(part.score)
            total.info[name] = float(part.score)
            for key, value in part.info.items():
                total.info[f"{name}/{key}"] = value
    return totals


def prefetch(rewards: Rewards, trajectories: Sequence[Trajectory]) -> None:
    """Start scoring finished trajectories now with the rewards that can (remote rewards,
    `cluster/rewards.py`); `score` later collects those results. In-process rewards: nothing."""
    for reward, _ in rewards.values():
        start = getattr(reward, "prefetch", None)
        if start is not None and trajectories:
            start([t.prompt for t in trajectories], [t.text for t in trajectories])


def score(trajectories: Sequence[Trajectory], rewards: Rewards) -> dict[str, float]:
    """Fill each trajectory's `reward` and `reward_info`; return `reward/...` metrics."""
    results = score_batch(rewards, [t.prompt for t in trajectories], [t.text for t in trajectories])
    for t, r in zip(trajectories, results):
        t.reward, t.reward_info = r.score, r.info
    values = [t.reward for t in trajectories]
    n = max(len(values), 1)
    groups: dict[str, list[float]] = {}
    for t in trajectories:
        groups.setdefault(t.group_key, []).append(t.reward)
    parts = {}
    if len(rewards) > 1:  # each part's mean, e.g. a weight-0 verifier watched beside a reward model
        parts = {f"reward/{name}/mean": sum(t.reward_info.get(name, 0.0) for t in trajectories) / n
                 for name in rewards}
    return parts | {
        "reward/mean": sum(values) / n,
        "reward/accuracy": sum(v >= 1.0 for v in values) / n,
        "reward/errors": float(sum(any(k.endswith("/error") for k in t.reward_info) for t in trajectories)),
        # groups where all k samples agree give zero advantage: no learning signal
        "reward/uniform_groups": sum(len(set(g)) == 1 for g in groups.values()) / max(len(groups), 1),
    }
