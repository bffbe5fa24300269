"""Rewards never stop the loop: an exception is a recorded zero with its reason."""

import pytest

from longrl.rewards.registry import available_rewards, get_reward, score_batch
from longrl.types import Prompt, RewardResult


def exact(prompts, responses):
    return [RewardResult(float(r == p.answer)) for p, r in zip(prompts, responses)]


def picky(prompts, responses):
    if any(r == "boom" for r in responses):
        raise RuntimeError("cannot parse 'boom'")
    return [RewardResult(0.5) for _ in responses]


def test_weighted_sum_and_parts():
    prompts = [Prompt(id="a", text="q", answer="1"), Prompt(id="b", text="q", answer="2")]
    results = score_batch({"exact": (exact, 2.0), "half": (picky, 1.0)}, prompts, ["1", "3"])
    assert [r.score for r in results] == [2.5, 0.5]
    assert results[0].info == {"exact": 1.0, "half": 0.5}


def test_a_raising_reward_is_a_recorded_zero_and_loses_only_its_item():
    prompts = [Prompt(id=str(i), text="q", answer="x") for i in range(3)]
    results = score_batch({"half": (picky, 1.0)}, prompts, ["ok", "boom", "fine"])
    assert [r.score for r in results] == [0.5, 0.0, 0.5]
    assert results[1].info["half/error"] == "RuntimeError: cannot parse 'boom'"
    assert "half/error" not in results[0].info


def test_wrong_result_count_is_an_error_not_a_crash():
    prompts = [Prompt(id="a", text="q", answer="x")]
    results = score_batch({"bad": (lambda p, r: [], 1.0)}, prompts, ["y"])
    assert results[0].score == 0.0 and "returned 0 results" in results[0].info["bad/error"]


def test_unknown_reward_lists_the_known_ones():
    assert "world" in available_rewards()
    with pytest.raises(KeyError, match="world"):
        get_reward("nope")
