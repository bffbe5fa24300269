"""The reward seam: built-ins by name, user rewards by reference, options checked when the config
loads, and rewards that never stop the loop (an exception is a recorded zero with its reason)."""

import pytest

import textwrap

from longrl.config import ConfigError, RunConfig, load_config
from longrl.errors import MissingExtraError
from longrl.rewards import registry
from longrl.rewards.registry import available_rewards, build_rewards, get_reward
from longrl.rewards.score import score_batch
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


def test_unknown_reward_names_the_nearest_and_the_known_ones():
    assert available_rewards() == ["code", "judge", "math", "reasoning_gym", "rm", "world"]
    with pytest.raises(ConfigError, match=r"unknown reward 'wrold': did you mean 'world'\?.*FILE.py:FUNCTION"):
        get_reward("wrold")


USER_REWARDS = textwrap.dedent("""
    from longrl.types import RewardResult

    def exact(prompt, response, bonus=0.0):
        return float(response.strip() == prompt.answer) + bonus

    def batched(prompts, responses):
        return [RewardResult(0.25, {"length": len(r)}) for r in responses]

    def bad_signature(question, answer):
        return 1.0

    def returns_text(prompt, response):
        return "yes"
""")


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(USER_REWARDS)
    return path


def test_user_reward_per_item_with_options_and_per_batch(user_file):
    prompts = [Prompt(id="a", text="q", answer="4"), Prompt(id="b", text="q", answer="5")]
    one = get_reward(f"{user_file}:exact", bonus=0.5)
    assert [r.score for r in one(prompts, ["4", "6"])] == [1.5, 0.5]
    batch = get_reward(f"{user_file}:batched")
    assert [(r.score, r.info) for r in batch(prompts, ["ab", "c"])] == [(0.25, {"length": 2}), (0.25, {"length": 1})]


def test_user_reward_mistakes_are_config_errors_that_say_what_to_do(user_file, tmp_path):
    with pytest.raises(ConfigError, match=r"first two parameters are \['question', 'answer'\]; name them"):
        get_reward(f"{user_file}:bad_signature")
    with pytest.raises(ConfigError, match="has no function 'nothing'"):
        get_reward(f"{user_file}:nothing")
    with pytest.raises(ConfigError, match="does not exist"):
        get_reward(f"{tmp_path}/absent.py:exact")
    with pytest.raises(ConfigError, match="cannot import module 'no_such_pkg.rewards'"):
        get_reward("no_such_pkg.rewards:judge")
    # a wrong return type is a recorded zero when scored, not a crash
    [result] = score_batch({"t": (get_reward(f"{user_file}:returns_text"), 1.0)}, [Prompt("a", "q", "1")], ["x"])
    assert result.score == 0.0 and "return a float or a RewardResult" in result.info["t/error"]


def _run_config(tmp_path, text):
    path = tmp_path / "run.toml"
    path.write_text(textwrap.dedent(text))
    return path


def test_reward_options_come_from_the_run_config(user_file, tmp_path):
    path = _run_config(tmp_path, f"""
        [reward]
        names = ["math", "{user_file}:exact"]
        weights = [1.0, 2.0]

        [reward.math]
        timeout_s = 5
        fallback = "none"

        [reward."{user_file}:exact"]
        bonus = 0.25
    """)
    config = load_config(RunConfig, path)
    assert config.reward.options == {"math": {"timeout_s": 5, "fallback": "none"},
                                     f"{user_file}:exact": {"bonus": 0.25}}
    rewards = build_rewards(config.reward)
    assert rewards[f"{user_file}:exact"][1] == 2.0
    [result] = rewards[f"{user_file}:exact"][0]([Prompt("a", "q", "3")], ["3"])
    assert result.score == 1.25


def test_bad_reward_options_name_file_line_and_nearest(tmp_path):
    path = _run_config(tmp_path, """
        [reward]
        names = ["math"]

        [reward.math]
        timeout = 5
    """)
    with pytest.raises(ConfigError, match=r"run.toml, line 6: key 'reward.math.timeout': unknown option of "
                                          r"reward 'math'; did you mean 'timeout_s'\?"):
        load_config(RunConfig, path)
    with pytest.raises(ConfigError, match=r"key 'reward.math.timeout_s': must be float"):
        load_config(RunConfig, path, ["reward.math={timeout_s='slow'}"])
    with pytest.raises(ConfigError, match=r"options for reward 'code', which is not in reward.names"):
        load_config(RunConfig, None, ["reward.code.url='http://x'"])
    with pytest.raises(ConfigError, match=r"unknown reward 'maths': did you mean 'math'"):
        load_config(RunConfig, None, ["reward.names=['maths']"])


def test_a_missing_extra_says_which_install_fixes_it(monkeypatch, tmp_path):
    (tmp_path / "needs_extra.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry.BUILTIN, "fancy", registry.Builtin("needs_extra", "factory", None, "fancy"))
    with pytest.raises(MissingExtraError, match=r"reward 'fancy' needs 'no_such_dependency_xyz'.*"
                                                r"pip install 'longrl\[fancy\]'"):
        get_reward("fancy")


def test_eval_reward_scores_the_evaluation_alone_and_is_checked_at_load(user_file):
    config = load_config(RunConfig, None, [f'reward.names=["{user_file}:batched", "world"]',
                                           "reward.weights=[1.0, 0.0]", "eval.reward=world"])
    rewards = build_rewards(config.reward)
    scoring = registry.eval_rewards(config.reward, config.eval.reward, rewards)
    assert list(scoring) == ["world"] and scoring["world"][1] == 1.0  # the verifier alone, weight 1
    assert registry.eval_rewards(config.reward, "", rewards) is rewards  # unset: the run's own rewards
    with pytest.raises(ConfigError, match=r"eval.reward.*unknown reward 'wrold': did you mean 'world'"):
        load_config(RunConfig, None, ["eval.reward=wrold"])


def test_each_part_of_several_rewards_is_logged_beside_the_total():
    from longrl.rewards.score import score
    from longrl.types import Trajectory

    prompts = [Prompt(id=str(i), text="q", answer="1") for i in range(4)]
    trajectories = [Trajectory(prompt=p, sample_index=0, prompt_ids=[1], text=text)
                    for p, text in zip(prompts, ["1", "1", "2", "boom"])]
    metrics = score(trajectories, {"exact": (exact, 0.0), "half": (picky, 1.0)})
    assert metrics["reward/exact/mean"] == 0.5  # watched with weight 0: logged, not in the total
    assert metrics["reward/half/mean"] == pytest.approx(3 * 0.5 / 4)  # 'boom' raised: a recorded zero
    assert metrics["reward/mean"] == pytest.approx(3 * 0.5 / 4)
    assert "reward/exact/mean" not in score(trajectories, {"exact": (exact, 1.0)})
