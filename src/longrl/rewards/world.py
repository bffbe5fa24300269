"""The `world` reward: the tiny world's exact verifier (`longrl.data.worlds`).

A response is correct when it has exactly one answer line `A: <number>` and that number equals
the reference. No answer line, or two different ones, scores 0 with the reason in `info`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from longrl.types import Prompt, RewardResult

_ANSWER = re.compile(r"^A: *(-?\d+) *$", re.MULTILINE)


def check_answer(response: str, answer: str) -> RewardResult:
    """1.0 when the response has exactly one answer line and it equals the reference."""
    found = _ANSWER.findall(response)
    if not found:
        return RewardResult(0.0, {"reason": "no_answer"})
    if len(set(found)) > 1:
        return RewardResult(0.0, {"reason": "multiple_answers", "extracted": found})
    correct = int(found[0]) == int(answer)
    return RewardResult(float(correct), {"extracted": found[0], "reason": "ok" if correct else "wrong"})


def world_reward():
    def score(prompts: Sequence[Prompt], responses: Sequence[str]) -> list[RewardResult]:
        return [check_answer(r, p.answer) for p, r in zip(prompts, responses)]

    return score
