"""The `code` reward on the local backend: extraction, the three test shapes, partial credit,
and the reward hacks the harness must not pay for."""

from __future__ import annotations

import pytest

from longrl.rewards.code import CodeReward, CodeRewardConfig, _fn_verdicts, extract_code
from longrl.rewards.registry import get_reward
from longrl.types import Prompt


@pytest.fixture(scope="module")
def reward() -> CodeReward:
    return CodeReward(CodeRewardConfig(max_workers=2, run_timeout_s=3.0))


@pytest.fixture(scope="module")
def partial() -> CodeReward:
    return CodeReward(CodeRewardConfig(max_workers=2, run_timeout_s=3.0, partial_credit=True))


ADD_IO = Prompt(
    "add",
    "add two numbers",
    tests=[
        {"stdin": "1 2\n", "expected_stdout": "3\n"},
        {"stdin": "10 -4\n", "expected_stdout": "6"},
        {"input": "0 0", "output": "0\n"},
        {"stdin": "7 5", "expected_stdout": "12\n"},
    ],
)
ADD_FN = Prompt(
    "add_fn",
    "write add(a, b)",
    tests=[
        {"assert": "assert add(1, 2) == 3"},
        {"assert": "assert add(-1, 1) == 0"},
        {"assert": "assert add(2, 2) == 4"},
        {"assert": "assert add(5, 5) == 10"},
    ],
)


def fenced(code: str, tag: str = "python") -> str:
    return f"Let me think.\n```{tag}\n{code}\n```\nDone."


def test_extract_code_prefers_the_last_block_in_the_language():
    text = "```python\nfirst\n```\nthen\n```cpp\nint main(){}\n```\n```python\nsecond\n```"
    assert extract_code(text, "python") == "second\n"
    assert extract_code(text, "cpp") == "int main(){}\n"
    assert extract_code("```\nplain\n```", "python") == "plain\n"
    assert extract_code("def f(): pass", "python") == "def f(): pass"


def test_registered_under_code():
    assert isinstance(get_reward("code", max_workers=1), CodeReward)


def test_stdin_stdout_all_or_nothing(reward):
    right = fenced("a, b = map(int, input().split())\nprint(a + b)")
    wrong_on_negatives = fenced("a, b = map(int, input().split())\nprint(abs(a) + abs(b))")
    results = reward([ADD_IO, ADD_IO], [right, wrong_on_negatives])
    assert [r.score for r in results] == [1.0, 0.0]
    assert results[0].info["passed"] == 4 and results[0].info["total"] == 4


def test_partial_credit_is_the_pass_fraction(partial):
    wrong_on_negatives = fenced("a, b = map(int, input().split())\nprint(abs(a) + abs(b))")
    crashes_on_zero = fenced("a, b = map(int, input().split())\nprint(a + b + 0 // a)")
    results = partial([ADD_IO, ADD_IO], [wrong_on_negatives, crashes_on_zero])
    assert [r.score for r in results] == [3 / 4, 3 / 4]


def test_cpp_stdin_stdout(reward):
    prompt = Prompt("add_cpp", "add", tests=ADD_IO.tests, meta={"language": "cpp"})
    code = fenced(
        '#include <iostream>\nint main(){long a,b;std::cin>>a>>b;std::cout<<a+b<<"\\n";}', "cpp"
    )
    assert reward([prompt], [code])[0].score == 1.0
    assert reward([prompt], [fenced("int main() { syntax error }", "cpp")])[0].score == 0.0


def test_function_style_asserts(reward, partial):
    good = fenced("def add(a, b):\n    return a + b")
    off_by_one = fenced("def add(a, b):\n    return a + b + (a == 5)")
    assert [r.score for r in reward([ADD_FN, ADD_FN], [good, off_by_one])] == [1.0, 0.0]
    assert partial([ADD_FN], [off_by_one])[0].score == 3 / 4


def test_humaneval_style_completion_is_prefixed_with_the_prompt(reward):
    prompt = Prompt(
        "he",
        "complete",
        tests=[{"test": "def check(f):\n    assert f(3) == 9\n", "entry_point": "square"}],
        meta={"prompt": 'def square(x):\n    """x squared"""\n', "entry_point": "square"},
    )
    assert (
        reward(
            [prompt, prompt], ["    return x * x\n", fenced("def square(x):\n    return x ** 2")]
        )[0].score
        == 1.0
    )
    assert reward([prompt], ["    return x + x\n"])[0].score == 0.0


@pytest.mark.parametrize(
    "hack",
    [
        "import os\nos._exit(0)",  # leave before the tests run, with success status
        "import sys\nsys.exit(0)",
        "print('\\nabc 0 1\\nabc 1 1\\nabc 2 1\\nabc 3 1\\nabc done')",  # forge verdict lines
        "import builtins\nbuiltins.AssertionError = type('Nope', (Exception,), {})\n"
        "def add(a, b):\n    return None",
        "while True:\n    pass",  # time out
    ],
)
def test_reward_hacks_score_zero(partial, hack):
    result = partial([ADD_FN], [fenced(hack)])[0]
    assert result.score == 0.0, result.info


def test_forged_lines_without_the_nonce_are_ignored():
    out = "\nnonce 0 1\nfake 1 1\nnonce 1 0\n"
    assert _fn_verdicts(out, "nonce", 3) == [True, False, False]


def test_prompt_without_tests_scores_zero_with_a_reason(reward):
    result = reward([Prompt("none", "x", tests=[])], ["print(1)"])[0]
    assert result.score == 0.0 and "no tests" in result.info["error"]
