"""The k1.5 length reward against hand-computed values (SPEC §4)."""

import pytest

from longrl.rewards.length import add_length_reward, length_rewards, length_weight
from longrl.types import Prompt, Segment, Trajectory


def test_hand_computed_group():
    # lengths 10, 20, 30, 50: min 10, max 50, span 40
    # λ = 0.5 - (len - 10) / 40 = [0.5, 0.25, 0.0, -0.5]
    got = length_rewards([10, 20, 30, 50], [True, True, True, True])
    assert got == pytest.approx([0.5, 0.25, 0.0, -0.5], abs=1e-12)


def test_wrong_answers_are_clipped_to_min_zero_lambda():
    # the same λ; wrong answers get min(0, λ): [0.0, 0.0, 0.0, -0.5]
    got = length_rewards([10, 20, 30, 50], [False, False, True, False])
    assert got == pytest.approx([0.0, 0.0, 0.0, -0.5], abs=1e-12)


def test_equal_lengths_give_zero():
    assert length_rewards([7, 7, 7], [True, False, True]) == [0.0, 0.0, 0.0]


def test_two_responses():
    # min 4, max 12: the shorter gets 0.5, the longer 0.5 - 1 = -0.5
    assert length_rewards([12, 4], [True, True]) == pytest.approx([-0.5, 0.5])
    assert length_rewards([12, 4], [False, False]) == pytest.approx([-0.5, 0.0])


def test_mismatched_inputs_and_empty_group():
    with pytest.raises(ValueError, match="2 lengths but 1"):
        length_rewards([1, 2], [True])
    assert length_rewards([], []) == []


def test_warmup_schedule():
    assert [length_weight(i, 0.3, warmup=2) for i in range(4)] == [0.0, 0.0, 0.3, 0.3]
    assert length_weight(0, 0.3, warmup=0) == 0.3


def test_added_to_scored_trajectories_per_group():
    def traj(prompt_id, n_tokens, reward):
        return Trajectory(prompt=Prompt(id=prompt_id, text="q"), sample_index=0, prompt_ids=[1],
                          segments=[Segment([7] * n_tokens, [0.0] * n_tokens, 0)], finish_reason="stop",
                          reward=reward)

    # group a: lengths 10 (correct), 30 (wrong) -> λ = 0.5, -0.5 ; group b: equal lengths -> 0
    group = [traj("a", 10, 1.0), traj("a", 30, 0.0), traj("b", 5, 1.0), traj("b", 5, 0.0)]
    metrics = add_length_reward(group, weight=0.2)
    assert [t.reward for t in group] == pytest.approx([1.1, -0.1, 1.0, 0.0])
    assert [t.reward_info["length"] for t in group] == pytest.approx([0.5, -0.5, 0.0, 0.0])
    assert metrics["reward/length_mean"] == pytest.approx(0.0)
