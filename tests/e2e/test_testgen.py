"""CYaRon test generation with majority voting on crafted problems, in the real sandbox.

Each expected test list and verdict is computed here by hand from the generated inputs.
"""

from __future__ import annotations

import json

import pytest

from longrl.sandbox.testgen import (
    Problem,
    TestgenConfig,
    TestGenerator,
    TestgenStats,
    generate_tests,
    testgen_main,
)

# Input: n, then n integers. Index 0 is forced to n=1 and index 1 to n=8 so that the subtly wrong
# and the crashing submissions below are certainly exposed.
ARRAY_GENERATOR = """
from cyaron import randint
i = int(input())
n = 1 if i == 0 else 8 if i == 1 else randint(2, 7)
print(n)
print(*[randint(1, 50) if i == 0 else randint(-50, 50) for _ in range(n)])
"""
READ = "n = int(input())\na = list(map(int, input().split()))\n"
SUM_CORRECT = [
    READ + "print(sum(a))",
    READ + "t = 0\nfor x in a:\n    t += x\nprint(t)",
    READ + "import functools, operator\nprint(functools.reduce(operator.add, a, 0))",
    READ + "print(sum(sorted(a)))",
    READ + "print(sum(x for x in a))",
    READ + "print(-sum(-x for x in a))",
    READ + "print(sum(a[::-1]))   ",  # trailing spaces: the judge ignores them
    (
        "cpp",
        "#include <iostream>\nint main(){int n;long s=0,x;std::cin>>n;"
        "for(int i=0;i<n;i++){std::cin>>x;s+=x;}std::cout<<s<<std::endl;}",
    ),
]
SUM_SUBTLY_WRONG = READ + "print(sum(a[:-1]) + (a[-1] if n > 1 else 0))"  # wrong when n == 1
SUM_CRASHES = READ + "assert n <= 5\nprint(sum(a))"  # crashes when n > 5
SUM_CORRECT_9TH = READ + "print(sum(map(int, a)))"


def sols(items):
    return [s if isinstance(s, tuple) else ("python", s) for s in items]


def array_of(stdin: str) -> list[int]:
    return list(map(int, stdin.split()[1:]))


@pytest.fixture(scope="module")
def generator():
    gen = TestGenerator(TestgenConfig(num_inputs=10, workers=2))
    yield gen
    gen.close()


def test_kept_when_nine_of_ten_pass(generator):
    problem = Problem(
        "sum9", ARRAY_GENERATOR, sols(SUM_CORRECT + [SUM_CORRECT_9TH, SUM_SUBTLY_WRONG])
    )
    result = generator.run(problem)
    inputs = [t["stdin"] for t in result.tests]
    assert result.inputs_generated == len(inputs) == len(set(inputs)) >= 8  # every input is valid
    assert result.tests == [
        {"stdin": s, "expected_stdout": f"{sum(array_of(s))}\n"} for s in inputs
    ]
    assert inputs[0].split()[0] == "1"  # the forced n=1 case exposes the subtly wrong submission
    assert result.solutions_passing == [True] * 9 + [False]
    assert result.kept and result.reason == "kept"


def test_dropped_when_only_eight_pass(generator):
    problem = Problem("sum8", ARRAY_GENERATOR, sols(SUM_CORRECT + [SUM_SUBTLY_WRONG, SUM_CRASHES]))
    result = generator.run(problem)
    # 8 correct submissions agree on every input: all inputs stay valid tests...
    assert all(t["expected_stdout"] == f"{sum(array_of(t['stdin']))}\n" for t in result.tests)
    assert len(result.tests) == result.inputs_generated
    # ...but the wrong and the crashing ones fail, 8 < 9: the problem is dropped.
    assert result.solutions_passing == [True] * 8 + [False, False]
    assert not result.kept and result.reason.startswith("8 of 10 solutions pass")


def test_tests_without_a_majority_are_dropped(generator):
    # 6 correct "max" submissions, 4 that print the last element: the two camps agree exactly on
    # the inputs whose last element is the maximum, and only there do >= 7 submissions agree.
    max_ok = [
        READ + "print(max(a))",
        READ + "print(sorted(a)[-1])",
        READ + "m = a[0]\nfor x in a:\n    m = x if x > m else m\nprint(m)",
        READ + "print(max(a, key=int))",
        READ + "print(-min(-x for x in a))",
        READ + "print(max(*a, a[0]))",
    ]
    last = [
        READ + "print(a[-1])",
        READ + "print(a[n - 1])",
        READ + "print(a[len(a) - 1])",
        READ + "*_, z = a\nprint(z)",
    ]
    problem = Problem("max", ARRAY_GENERATOR, sols(max_ok + last))
    result = generator.run(problem)
    all_inputs, _ = generator.inputs(ARRAY_GENERATOR)
    expected = [
        {"stdin": s, "expected_stdout": f"{max(array_of(s))}\n"}
        for s in all_inputs
        if array_of(s)[-1] == max(array_of(s))
    ]
    assert result.tests == expected and 0 < len(expected) < len(all_inputs)
    assert result.solutions_passing == [True] * 10 and result.kept  # the paper's blind spot


def test_broken_generator_and_special_judge(generator):
    crash = Problem("crash", "raise SystemExit(1)", sols(SUM_CORRECT + [SUM_CORRECT_9TH] * 2))
    result = generator.run(crash)
    assert (result.kept, result.reason, result.generator_failures) == (
        False,
        "generator produced no input",
        10,
    )
    judged = Problem("spj", ARRAY_GENERATOR, sols(SUM_CORRECT), special_judge=True)
    assert generator.run(judged).reason == "special judge"
    stats = TestgenStats()
    results = list(generate_tests([crash, judged], generator, stats))
    assert [r.kept for r in results] == [False, False]
    assert (stats.problems, stats.without_special_judge, stats.with_generator, stats.kept) == (
        2,
        1,
        0,
        0,
    )


def test_config_rejects_a_non_majority():
    with pytest.raises(ValueError, match="strict majority"):
        TestgenConfig(num_solutions=10, min_agree=5)


def test_cli_writes_kept_problems(tmp_path):
    problems = tmp_path / "problems.jsonl"
    record = {
        "id": "sum9",
        "statement": "Sum n integers.",
        "generator": ARRAY_GENERATOR,
        "language": "python",
        "solutions": [
            s if isinstance(s, str) else {"language": s[0], "code": s[1]}
            for s in SUM_CORRECT + [SUM_CORRECT_9TH, SUM_SUBTLY_WRONG]
        ],
    }
    problems.write_text(json.dumps(record) + "\n")
    out, report = tmp_path / "kept.jsonl", tmp_path / "report.json"
    assert (
        testgen_main([str(problems), "-o", str(out), "--report", str(report), "--num-inputs", "4"])
        == 0
    )
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert [k["id"] for k in kept] == ["sum9"] and kept[0]["text"] == "Sum n integers."
    assert len(kept[0]["tests"]) == 4
    assert json.loads(report.read_text())["stats"]["kept"] == 1
