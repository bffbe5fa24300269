"""reasoning-gym reward: the task's own scorer on the response's <answer>, 1 right, 0 wrong."""

import json
from dataclasses import replace

import pytest

from longrl.data.sources import load_source
from longrl.rewards.gym import GymReward, GymRewardConfig, gym_reward
from longrl.types import Prompt

# A spread of task families; `rearc` keeps grids as tuples (the JSON round trip case), a wrong
# `prime_factorization` answer makes its scorer raise, `countdown` accepts any expression
# that evaluates to the target.
GENERATORS = ["basic_arithmetic", "chain_sum", "leg_counting", "word_sorting", "prime_factorization",
              "countdown", "rotate_matrix", "rearc"]


@pytest.fixture(scope="module")
def prompts():
    return load_source(f"reasoning_gym:{','.join(GENERATORS)}?size=3&seed=11")


def through_json(prompt: Prompt) -> Prompt:
    """The prompt as a curated JSONL file gives it back: tuples become lists."""
    return replace(prompt, meta=json.loads(json.dumps(prompt.meta)))


def test_factory_checks_its_options():
    assert isinstance(gym_reward(binary=False), GymReward)
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['binay'\]; valid: \['binary'\]"):
        gym_reward(binay=True)


def test_reference_answers_score_1_and_wrong_ones_0(prompts):
    reward = GymReward(GymRewardConfig())
    assert len(prompts) == 3 * len(GENERATORS)
    right = reward(prompts, [f"<think>working</think>\n<answer>{p.answer}</answer>" for p in prompts])
    assert [(p.id, r.score) for p, r in zip(prompts, right)] == [(p.id, 1.0) for p in prompts]
    assert all(r.info["reason"] == "correct" for r in right)
    wrong = reward(prompts, ["<answer>zzz</answer>"] * len(prompts))
    assert [(p.id, r.score) for p, r in zip(prompts, wrong)] == [(p.id, 0.0) for p in prompts]


def test_scores_survive_a_json_round_trip(prompts):
    reward = GymReward(GymRewardConfig())
    reloaded = [through_json(p) for p in prompts]
    grid = next(p for p in prompts if p.meta["reasoning_gym"]["dataset"] == "rearc")
    assert isinstance(grid.meta["reasoning_gym"]["entry"]["metadata"]["output"], tuple)
    results = reward(reloaded, [f"<answer>{p.answer}</answer>" for p in reloaded])
    assert [r.score for r in results] == [1.0] * len(prompts)


def test_answer_extraction():
    (prompt,) = load_source("reasoning_gym:basic_arithmetic?size=1&seed=3")
    answer = prompt.answer
    reward = GymReward(GymRewardConfig())
    cases = [
        (f"<answer>7</answer> no wait <answer> {answer} </answer>", 1.0, "correct"),  # last pair, stripped
        (f"<answer>{answer}</answer> no wait <answer>7</answer>", 0.0, "wrong"),
        (f"The answer is {answer}.", 0.0, "no_answer"),  # no tags: not scored
        ("", 0.0, "no_answer"),
    ]
    results = reward([prompt] * len(cases), [c[0] for c in cases])
    assert [(r.score, r.info["reason"]) for r in results] == [(s, why) for _, s, why in cases]


def test_partial_credit_is_binary_unless_asked():
    (prompt,) = load_source("reasoning_gym:basic_arithmetic?size=1&seed=3")
    near_miss = f"<answer>{prompt.answer}1</answer>"  # contains the reference: default scorer gives
    expected = len(prompt.answer) / (len(prompt.answer) + 1)  # len(reference) / len(answer)
    (binary,) = GymReward(GymRewardConfig())([prompt], [near_miss])
    (graded,) = GymReward(GymRewardConfig(binary=False))([prompt], [near_miss])
    assert (binary.score, binary.info["reason"], binary.info["task_score"]) == (0.0, "partial", expected)
    assert graded.score == expected


def test_unparsable_answer_is_wrong_not_an_error():
    (prompt,) = load_source("reasoning_gym:prime_factorization?size=1&seed=0")
    (result,) = gym_reward()([prompt], ["<answer>two times three</answer>"])
    assert result.score == 0.0 and result.info["reason"] == "unparsable"
    assert result.info["scorer_exception"].startswith("ValueError: invalid literal for int()")
    assert not any(key.endswith("error") for key in result.info)  # not counted as a reward failure


def test_a_prompt_from_elsewhere_scores_0():
    (result,) = GymReward(GymRewardConfig())([Prompt(id="w", text="1+1", answer="2")], ["<answer>2</answer>"])
    assert (result.score, result.info) == (0.0, {"reason": "not_reasoning_gym"})
