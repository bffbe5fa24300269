"""The k1.5 length reward (SPEC §4, paper §2.3.3), as pure functions.

For the k responses of one prompt with token lengths len(i), min_len and max_len:

    λ_i = 0.5 − (len(i) − min_len) / (max_len − min_len)        (all 0 when max_len == min_len)
    len_reward(i) = λ_i            if response i is correct
                    min(0, λ_i)    if it is wrong

so among correct answers shorter is better, and a wrong answer is never rewarded for being
short, only penalised for being long. The length reward is added to the task reward with a weight
that is 0 for the first `warmup` iterations (plain policy optimisation) and constant after.
"""

from __future__ import annotations

from collections.abc import Sequence


def length_rewards(lengths: Sequence[int], correct: Sequence[bool]) -> list[float]:
    """len_reward(i) for the k responses of one prompt."""
    if len(lengths) != len(correct):
        raise ValueError(f"{len(lengths)} lengths but {len(correct)} correctness flags")
    if not lengths:
        return []
    low, high = min(lengths), max(lengths)
    if high == low:
        return [0.0] * len(lengths)
    out = []
    for n, ok in zip(lengths, correct):
        lam = 0.5 - (n - low) / (high - low)
        out.append(lam if ok else min(0.0, lam))
    return out


def length_weight(iteration: int, weight: float, warmup: int) -> float:
    """The weight of the length reward at `iteration` (0-based): 0 during warm-up, then `weight`."""
    return 0.0 if iteration < warmup else weight


def add_length_reward(trajectories, weight: float) -> dict[str, float]:
    """Add `weight * len_reward` to each scored trajectory, groups of k by `group_key`.

    A response counts as correct when its task reward reaches 1. The part added is recorded in
    `reward_info["length"]`. Returns `reward/length_mean` (the unweighted mean len_reward).
    """
    groups: dict[str, list] = {}
    for t in trajectories:
        groups.setdefault(t.group_key, []).append(t)
    total, count = 0.0, 0
    for group in groups.values():
        parts = length_rewards([t.num_response_tokens for t in group], [t.reward >= 1.0 for t in group])
        for t, part in zip(group, parts):
            t.reward = float(t.reward) + weight * part
            t.reward_info["length"] = part
            total, count = total + part, count + 1
    return {"reward/length_mean": total / max(count, 1), "reward/length_weight": weight}
