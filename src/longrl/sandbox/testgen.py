"""Test-case generation for code problems by majority vote (SPEC §6, k1.5 §2.3.5).

For a problem without a special judge that has a generator program and ground-truth
submissions:

1. run the generator (written with CYaRon) in the sandbox `num_inputs` times (paper: 50); run
   `i` reads `i` on stdin and prints one test input; `random` is seeded with `seed + i` first,
   so the inputs are reproducible;
2. run `num_solutions` submissions (paper: 10) on every input;
3. keep an input as a test when at least `min_agree` submissions (paper: 7) print the same
   output (compared as the judge does: trailing whitespace ignored); that output is expected;
4. keep the problem when at least `min_pass` submissions (paper: 9) pass every kept test.

`generate_tests(problems)` yields one `TestgenResult` per problem and fills `TestgenStats`
(the paper's yield: 1,000 problems → 614 without a special judge → 463 generators → 323 kept).

Deviations: duplicate generated inputs are dropped before voting (a duplicate would count the
same evidence twice); a problem also needs at least `min_tests` kept tests (default 1), since a
problem with no test would admit every answer.

Problem file (JSON lines) for `longrl testgen`: `{"id", "statement", "generator",
"solutions": [code or {"code", "language"}], "language": "python"|"cpp", "special_judge": false}`.
The output file holds the kept problems as `Prompt`-shaped records with `tests` filled.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from longrl.sandbox.isolate import IoCase, Isolator, Limits, SandboxConfig

CYARON_PACKAGES = ("cyaron", "xeger", "colorful")  # CYaRon and its pure-Python dependencies


@dataclass
class TestgenConfig:
    __test__ = False  # not a pytest class

    num_inputs: int = 50  # generator runs per problem (paper: 50)
    num_solutions: int = 10  # submissions run on each input (paper: 10)
    min_agree: int = 7  # a test is valid when this many submissions agree (paper: 7 of 10)
    min_pass: int = 9  # a problem is kept when this many pass every valid test (paper: 9 of 10)
    min_tests: int = 1  # ours: a problem needs at least this many valid tests
    seed: int = 0  # generator run i seeds `random` with seed + i
    workers: int = 2  # concurrent sandbox runs
    generator_limits: Limits = field(default_factory=lambda: Limits(wall_s=10.0, memory_mb=512))
    solution_limits: Limits = field(default_factory=lambda: Limits(wall_s=5.0, memory_mb=512))

    def __post_init__(self) -> None:
        if not 0 < self.min_agree <= self.num_solutions:
            raise ValueError(
                f"TestgenConfig.min_agree={self.min_agree} must be in "
                f"1..num_solutions={self.num_solutions}"
            )
        if not 0 < self.min_pass <= self.num_solutions:
            raise ValueError(
                f"TestgenConfig.min_pass={self.min_pass} must be in "
                f"1..num_solutions={self.num_solutions}"
            )
        if 2 * self.min_agree <= self.num_solutions:
            raise ValueError(
                "TestgenConfig.min_agree must be a strict majority of num_solutions, "
                "or two different outputs could both be 'expected'"
            )


@dataclass
class Problem:
    id: str
    generator: str  # Python source using CYaRon; reads the test index on stdin, prints one input
    solutions: list[tuple[str, str]]  # (language, code) ground-truth submissions
    statement: str = ""
    special_judge: bool = False

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Problem:
        language = record.get("language", "python")
        solutions = [
            (s.get("language", language), s["code"]) if isinstance(s, dict) else (language, s)
            for s in record.get("solutions", [])
        ]
        return cls(
            str(record["id"]),
            record.get("generator") or "",
            solutions,
            record.get("statement", ""),
            bool(record.get("special_judge", False)),
        )


@dataclass
class TestgenResult:
    __test__ = False

    problem_id: str
    kept: bool
    reason: str  # why the problem was dropped, or "kept"
    tests: list[dict[str, str]]  # [{"stdin", "expected_stdout"}], the valid tests
    inputs_generated: int = 0
    generator_failures: int = 0
    solutions_passing: list[bool] = field(default_factory=list)


@dataclass
class TestgenStats:
    __test__ = False

    problems: int = 0
    without_special_judge: int = 0
    with_generator: int = 0  # generator produced at least one input
    kept: int = 0
    tests_kept: int = 0


def normalize(output: bytes) -> str:
    """The key outputs are voted on: what `isolate.outputs_match` considers equal is equal."""
    text = output.decode(errors="replace")
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


def _seeded(generator: str, seed: int) -> str:
    # Prepended, not a wrapper: the generator stays a plain script reading stdin.
    return f"import random as _longrl_random\n_longrl_random.seed({seed})\n{generator}"


class TestGenerator:
    """Runs generators and submissions in the sandbox and votes."""

    __test__ = False

    def __init__(self, config: TestgenConfig | None = None, isolator: Isolator | None = None):
        self.config = config or TestgenConfig()
        self.isolator = isolator or Isolator(SandboxConfig(python_packages=CYARON_PACKAGES))
        self.pool = ThreadPoolExecutor(self.config.workers, thread_name_prefix="testgen")

    def inputs(self, generator: str) -> tuple[list[str], int]:
        """Distinct generated inputs (in index order) and the number of failed generator runs."""
        cfg = self.config
        runs = list(
            self.pool.map(
                lambda i: (
                    self.isolator.run_code(
                        "python",
                        _seeded(generator, cfg.seed + i),
                        stdin=f"{i}\n",
                        limits=cfg.generator_limits,
                    ).run
                ),
                range(cfg.num_inputs),
            )
        )
        good = [
            r.stdout.decode(errors="replace")
            for r in runs
            if r is not None and r.ok and r.stdout.strip()
        ]
        return list(dict.fromkeys(good)), len(runs) - len(good)

    def outputs(self, solution: tuple[str, str], inputs: list[str]) -> list[str | None]:
        """A submission's normalized output per input; None where it did not finish cleanly."""
        language, code = solution
        batch = self.isolator.run_tests(
            language, code, [IoCase(i) for i in inputs], limits=self.config.solution_limits
        )
        if batch.compile_failed:
            return [None] * len(inputs)
        return [normalize(r.stdout) if r.ok else None for r in batch.runs]

    def vote(
        self, inputs: list[str], outputs: list[list[str | None]]
    ) -> tuple[list[dict[str, str]], list[bool]]:
        """Valid tests (majority output per input) and which submissions pass all of them."""
        tests, columns = [], []
        for t, stdin in enumerate(inputs):
            counts = Counter(o[t] for o in outputs if o[t] is not None)
            if counts:
                expected, votes = counts.most_common(1)[0]
                if votes >= self.config.min_agree:
                    tests.append({"stdin": stdin, "expected_stdout": expected + "\n"})
                    columns.append((t, expected))
        passing = [all(o[t] == expected for t, expected in columns) for o in outputs]
        return tests, passing

    def run(self, problem: Problem) -> TestgenResult:
        cfg = self.config
        if problem.special_judge:
            return TestgenResult(problem.id, False, "special judge", [])
        if len(problem.solutions) < cfg.num_solutions:
            return TestgenResult(
                problem.id, False, f"{len(problem.solutions)} solutions < {cfg.num_solutions}", []
            )
        inputs, gen_failures = (
            self.inputs(problem.generator) if problem.generator.strip() else ([], 0)
        )
        result = TestgenResult(problem.id, False, "", [], len(inputs), gen_failures)
        if not inputs:
            result.reason = "generator produced no input"
            return result
        solutions = problem.solutions[: cfg.num_solutions]
        outputs = list(self.pool.map(lambda s: self.outputs(s, inputs), solutions))
        result.tests, result.solutions_passing = self.vote(inputs, outputs)
        n_pass = sum(result.solutions_passing)
        if len(result.tests) < cfg.min_tests:
            result.reason = f"{len(result.tests)} valid tests < min_tests={cfg.min_tests}"
        elif n_pass < cfg.min_pass:
            result.reason = (
                f"{n_pass} of {len(solutions)} solutions pass all tests < min_pass={cfg.min_pass}"
            )
        else:
            result.kept, result.reason = True, "kept"
        return result

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def generate_tests(
    problems: Iterable[Problem], generator: TestGenerator, stats: TestgenStats | None = None
) -> Iterator[TestgenResult]:
    """One result per problem, in order; `stats` (if given) accumulates the yield funnel."""
    stats = stats if stats is not None else TestgenStats()
    for problem in problems:
        result = generator.run(problem)
        stats.problems += 1
        stats.without_special_judge += not problem.special_judge
        stats.with_generator += result.inputs_generated > 0
        stats.kept += result.kept
        stats.tests_kept += len(result.tests) if result.kept else 0
        yield result


def testgen_main(argv: list[str]) -> int:
    """`longrl testgen PROBLEMS.jsonl -o KEPT.jsonl`: generate and validate tests."""
    defaults = TestgenConfig()
    parser = argparse.ArgumentParser(prog="longrl testgen", description=testgen_main.__doc__)
    parser.add_argument(
        "problems", help="JSON lines: id, statement, generator, solutions, language, special_judge"
    )
    parser.add_argument(
        "-o", "--output", required=True, help="kept problems as Prompt records (JSON lines)"
    )
    parser.add_argument("--report", help="per-problem results and the yield statistics (JSON)")
    parser.add_argument("--num-inputs", type=int, default=defaults.num_inputs)
    parser.add_argument("--num-solutions", type=int, default=defaults.num_solutions)
    parser.add_argument("--min-agree", type=int, default=defaults.min_agree)
    parser.add_argument("--min-pass", type=int, default=defaults.min_pass)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--workers", type=int, default=defaults.workers)
    args = parser.parse_args(argv)
    config = TestgenConfig(
        num_inputs=args.num_inputs,
        num_solutions=args.num_solutions,
        min_agree=args.min_agree,
        min_pass=args.min_pass,
        seed=args.seed,
        workers=args.workers,
    )
    with open(args.problems) as f:
        problems = [Problem.from_record(json.loads(line)) for line in f if line.strip()]
    statements = {p.id: p.statement for p in problems}
    stats, results = TestgenStats(), []
    generator = TestGenerator(config)
    try:
        with open(args.output, "w") as out:
            for result in generate_tests(problems, generator, stats):
                results.append(result)
                print(
                    f"{result.problem_id}: {result.reason} ({len(result.tests)} tests)",
                    file=sys.stderr,
                )
                if result.kept:
                    record = {
                        "id": result.problem_id,
                        "text": statements[result.problem_id],
                        "tests": result.tests,
                        "source": "testgen",
                        "tags": ["code"],
                    }
                    out.write(json.dumps(record) + "\n")
    finally:
        generator.close()
    summary = asdict(stats)
    print(json.dumps(summary), file=sys.stderr)
    if args.report:
        with open(args.report, "w") as f:
            json.dump({"stats": summary, "results": [asdict(r) for r in results]}, f, indent=1)
    return 0


testgen_main.__test__ = False  # its name starts with "test": keep pytest from collecting it
