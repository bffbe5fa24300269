"""The `code` reward on the local backend: extraction, the three test shapes, partial credit,
and the reward hacks the harness must not pay for; the one judging path over a scripted
`Sandbox`; its options."""

from __future__ import annotations

import pytest

from longrl.rewards.code import (
    CodeReward,
    CodeRewardConfig,
    _fn_verdicts,
    code_reward,
    extract_code,
    judge_job,
    make_job,
)
from longrl.sandbox import CodeRun, Execution, IoCase, IoRun, Limits, case_passed
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


def test_factory_takes_config_fields_and_names_unknown_ones():
    reward = code_reward(max_workers=1, partial_credit=True)
    assert isinstance(reward, CodeReward) and reward.config.partial_credit
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['bakend'\]; valid: \['allow_"):
        code_reward(bakend="http")


@pytest.mark.parametrize(
    "options, message",
    [
        ({"backend": "htp"}, r"backend = 'htp' is invalid \(\[reward.code\] backend\); use"),
        ({"backend": "http", "url": "127.0.0.1:8080"}, r"url = '127.0.0.1:8080' .*http://"),
        ({"run_timeout_s": 0}, r"run_timeout_s = 0 is invalid"),
        ({"memory_mb": -1}, r"memory_mb = -1 is invalid"),
        ({"max_workers": -2}, r"max_workers = -2 .* 0 for the default"),
        ({"default_language": "rust"}, r"default_language = 'rust' .* 'python' or 'cpp'"),
    ],
)
def test_config_errors_name_the_field_and_the_fix(options, message):
    with pytest.raises(ValueError, match=message):
        CodeRewardConfig(**options)


def test_default_workers_follow_the_backend():
    assert CodeRewardConfig().workers == 4
    assert CodeRewardConfig(backend="http").workers == 64
    assert CodeRewardConfig(backend="http", max_workers=3).workers == 3


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


# -- the one judging path, over a scripted Sandbox (no jail) ------------------------------------


class ScriptedSandbox:
    """A `Sandbox` that answers from fixed executions and records what it was asked."""

    def __init__(self, io_runs: list[Execution], harness_stdout: str = "", compile_ok=None):
        self.io_runs, self.harness_stdout, self.compile_ok = io_runs, harness_stdout, compile_ok
        self.calls: list[tuple] = []

    def run_tests(self, language, code, cases, *, files=None, limits=None,
                  stop_on_first_failure=False):  # fmt: skip
        self.calls.append(("run_tests", language, list(cases), limits, stop_on_first_failure))
        compiled = None if self.compile_ok is None else Execution(
            "ok" if self.compile_ok else "error", 0 if self.compile_ok else 1)  # fmt: skip
        if compiled is not None and not compiled.ok:
            return IoRun(compiled)
        runs, passed = [], []
        for case, run in zip(cases, self.io_runs):
            runs.append(run)
            passed.append(case_passed(case, run))
            if stop_on_first_failure and not passed[-1]:
                break
        return IoRun(compiled, runs, passed)

    def run_code(self, language, code, *, stdin="", files=None, limits=None):
        self.calls.append(("run_code", language, stdin, files, limits))
        nonce = stdin.split("\n")[0]
        out = self.harness_stdout.replace("NONCE", nonce)
        return CodeRun(None, Execution("ok", 0, stdout=out.encode()))


MIXED = Prompt(
    "mixed",
    "io and asserts",
    tests=[
        {"stdin": "1", "expected_stdout": "1"},
        {"stdin": "2", "expected_stdout": "2"},
        {"stdin": "3", "expected_stdout": "3"},
        {"assert": "assert f(1) == 1"},
        {"assert": "assert f(2) == 2"},
    ],
)


def test_judge_job_asks_the_sandbox_and_reads_its_verdicts():
    sandbox = ScriptedSandbox(
        [Execution("ok", 0, b"1\n"), Execution("ok", 0, b"two\n"), Execution("timeout", None)],
        harness_stdout="\nNONCE 0 1\nNONCE 1 0\nNONCE done\n",
    )
    job = make_job(MIXED, "```python\nprint(input())\n```", "python")
    limits = Limits(wall_s=2.0, memory_mb=100)
    verdicts, status = judge_job(sandbox, job, limits, stop_early=False)
    assert verdicts == [True, False, False, True, False]
    assert status == "wrong_answer"  # the first failed case ran cleanly but printed "two"
    (_, language, cases, sent_limits, stop), (_, harness_lang, stdin, files, _) = sandbox.calls
    assert (language, sent_limits, stop, harness_lang) == ("python", limits, False, "python")
    assert cases == [IoCase("1", "1"), IoCase("2", "2"), IoCase("3", "3")]
    assert files == {"solution.py": b"print(input())\n"}
    assert stdin.endswith('\n["assert f(1) == 1", "assert f(2) == 2"]\n')


def test_judge_job_stop_early_counts_unrun_cases_as_failed():
    sandbox = ScriptedSandbox([Execution("error", 1), Execution("ok", 0, b"2"), Execution("ok", 0)])
    job = make_job(Prompt("io", "x", tests=MIXED.tests[:3]), "print(1)", "python")
    verdicts, status = judge_job(sandbox, job, Limits(), stop_early=True)
    assert (verdicts, status) == ([False, False, False], "error")
    assert len(sandbox.calls) == 1 and sandbox.calls[0][-1] is True


def test_judge_job_reports_a_solution_that_does_not_load():
    sandbox = ScriptedSandbox([], harness_stdout="\nNONCE load-error SyntaxError\n")
    job = make_job(Prompt("fn", "x", tests=MIXED.tests[3:]), "def f(:", "python")
    assert judge_job(sandbox, job, Limits(), stop_early=False) == ([False, False], "load_error")


def test_judge_job_compile_failure_fails_every_case():
    sandbox = ScriptedSandbox([], compile_ok=False)
    job = make_job(Prompt("io", "x", tests=MIXED.tests[:3], meta={"language": "cpp"}), "x", "cpp")
    assert judge_job(sandbox, job, Limits(), stop_early=False) == ([False] * 3, "compile error")


def test_reward_uses_the_sandbox_it_is_given():
    sandbox = ScriptedSandbox([Execution("ok", 0, b"1"), Execution("ok", 0, b"2"),
                               Execution("ok", 0, b"3")])  # fmt: skip
    reward = CodeReward(CodeRewardConfig(max_workers=1), sandbox=sandbox)
    (result,) = reward([Prompt("io", "x", tests=MIXED.tests[:3])], ["print(input())"])
    assert (result.score, result.info) == (1.0, {"passed": 3, "total": 3, "status": "ok"})
