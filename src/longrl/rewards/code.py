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

Judging happens once, in `judge_job`, against the `Sandbox` protocol (`sandbox/protocol.py`); a
backend only picks the transport: `local` is an `Isolator` in this process, `http` is an
`HttpSandbox` talking to `longrl sandbox serve` at `url`. Jobs run `max_workers` at a time.

`info` of each result: `passed`, `total`, and `status`, how the runs ended: `ok`, the first
failing run's verdict (`error`, `timeout`, `memory`, `output_limit`, `sandbox_error`),
`wrong_answer` (a stdin/stdout case ran cleanly with the wrong output), `load_error` (the
solution of function-style cases raised on import), or `compile <verdict>`.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from typing import Literal

from longrl.sandbox.limits import Limits
from longrl.sandbox.protocol import IoCase, IoRun, Sandbox
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
    """Options of the `code` reward: a run's `[reward.code]` table, or `code_reward(**options)`."""

    backend: Literal["local", "http"] = field(default="local", metadata={
        "help": "Where programs run: 'local', jails in this process (Isolator; needs the sandbox "
                "extra and root, docs/sandbox.md); 'http', the service `longrl sandbox serve` at "
                "`url`."})  # fmt: skip
    url: str = field(default="http://127.0.0.1:8080", metadata={
        "help": "Base URL of the sandbox service, for backend = 'http' (ignored otherwise)."})
    partial_credit: bool = field(default=False, metadata={
        "help": "Score = fraction of tests passed (ours) instead of k1.5's all-or-nothing 0/1; "
                "false also stops a stdin/stdout batch at its first failed case."})  # fmt: skip
    run_timeout_s: float = field(default=10.0, metadata={
        "help": "Wall-clock limit per program run, seconds: one stdin/stdout case, or all the "
                "function-style cases of a prompt together."})  # fmt: skip
    memory_mb: int = field(default=512, metadata={"help": "Memory limit per program run, MiB."})
    max_workers: int = field(default=0, metadata={
        "help": "Prompts judged at once (threads); 0: 4 for 'local' (each holds a jail here), "
                "64 for 'http' (each waits on a request; the service queues, pushes back)."})
    default_language: Literal["python", "cpp"] = field(default="python", metadata={
        "help": "Language of a prompt without meta['language']."})
    allow_unsafe: bool = field(default=False, metadata={
        "help": "backend = 'local' only: if isolation cannot be set up, run WITHOUT it (rlimits "
                "only) instead of failing. Never for real training."})  # fmt: skip

    def __post_init__(self) -> None:
        def bad(name: str, value, fix: str) -> ValueError:
            return ValueError(f"code reward: {name} = {value!r} is invalid ([reward.code] "
                              f"{name}); {fix}")  # fmt: skip

        if self.backend not in ("local", "http"):
            raise bad("backend", self.backend, "use 'local' or 'http'")
        if self.backend == "http" and not self.url.startswith(("http://", "https://")):
            raise bad("url", self.url, "give the service's base URL, e.g. 'http://127.0.0.1:8080'")
        if not self.run_timeout_s > 0:
            raise bad("run_timeout_s", self.run_timeout_s, "give seconds > 0, e.g. 10")
        if not self.memory_mb > 0:
            raise bad("memory_mb", self.memory_mb, "give MiB > 0, e.g. 512")
        if self.max_workers < 0:
            raise bad("max_workers", self.max_workers, "give a count >= 1, or 0 for the default")
        if self.default_language not in ("python", "cpp"):
            raise bad("default_language", self.default_language, "use 'python' or 'cpp'")

    @property
    def workers(self) -> int:
        return self.max_workers or (4 if self.backend == "local" else 64)


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
class CodeJob:
    """What to run for one response: its program and the prompt's cases."""

    language: str
    code: str
    io_cases: list[IoCase]  # stdin/stdout cases, run once each
    fn_cases: list[str]  # python sources to exec after the solution, all in one harness run


def make_job(prompt: Prompt, response: str, default_language: str) -> CodeJob:
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
                IoCase(
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
    return CodeJob(language, code, io_cases, fn_cases)


def _fn_stdin(nonce: str, cases: list[str]) -> str:
    return f"{nonce}\n{json.dumps(cases)}\n"


def _fn_verdicts(stdout: str, nonce: str, n: int) -> list[bool]:
    """Per-case verdicts from the harness's nonce-tagged report lines; missing cases failed."""
    verdicts = [False] * n
    for i, ok in re.findall(rf"^{nonce} (\d+) ([01])$", stdout, flags=re.MULTILINE):
        if int(i) < n:
            verdicts[int(i)] = ok == "1"
    return verdicts


# -- judging: one place, over any Sandbox -------------------------------------------------------


def judge_job(
    sandbox: Sandbox, job: CodeJob, limits: Limits, stop_early: bool
) -> tuple[list[bool], str]:
    """Per-case verdicts (stdin/stdout cases first, then function-style) and how the runs ended
    (the `status` of the module docstring). `stop_early` stops a stdin/stdout batch at its
    first failed case; the cases it skips count as failed."""
    verdicts, notes = [], []
    if job.io_cases:
        batch = sandbox.run_tests(
            job.language, job.code, job.io_cases, limits=limits, stop_on_first_failure=stop_early
        )
        if batch.compile_failed:
            n_cases = len(job.io_cases) + len(job.fn_cases)
            return [False] * n_cases, f"compile {batch.compile.status}"
        verdicts += batch.verdicts(len(job.io_cases))
        notes.append(_io_status(batch, len(job.io_cases)))
    if job.fn_cases:
        nonce = secrets.token_hex(16)
        run = sandbox.run_code(
            "python",
            HARNESS,
            stdin=_fn_stdin(nonce, job.fn_cases),
            files={"solution.py": job.code.encode()},
            limits=limits,
        ).run
        stdout = run.stdout.decode(errors="replace") if run is not None else ""
        verdicts += _fn_verdicts(stdout, nonce, len(job.fn_cases))
        loaded = not re.search(rf"^{nonce} load-error ", stdout, flags=re.MULTILINE)
        notes.append("sandbox_error" if run is None else run.status if loaded else "load_error")
    return verdicts, next((n for n in notes if n != "ok"), "ok")


def _io_status(batch: IoRun, n_cases: int) -> str:
    """How the first failed case ended; `sandbox_error` if cases went unrun without a failure."""
    for run, passed in zip(batch.runs, batch.passed):
        if not passed:
            return "wrong_answer" if run.ok else run.status
    return "ok" if len(batch.runs) == n_cases else "sandbox_error"


def make_sandbox(config: CodeRewardConfig) -> Sandbox:
    """The backend's transport: an `Isolator` here, or an `HttpSandbox` to the service."""
    if config.backend == "http":
        from longrl.sandbox.client import HttpSandbox  # httpx comes with the sandbox extra

        return HttpSandbox(config.url)
    from longrl.sandbox.isolate import Isolator, SandboxConfig

    return Isolator(SandboxConfig(allow_unsafe=config.allow_unsafe))


# -- the reward --------------------------------------------------------------------------------


class CodeReward:
    """`(prompts, responses) -> [RewardResult]`; info has passed/total and the runs' status.

    `sandbox` defaults to the one `config.backend` names (`make_sandbox`)."""

    def __init__(self, config: CodeRewardConfig, sandbox: Sandbox | None = None):
        self.config = config
        self.sandbox = sandbox if sandbox is not None else make_sandbox(config)
        self.limits = Limits(wall_s=config.run_timeout_s, memory_mb=config.memory_mb)
        self.executor = ThreadPoolExecutor(config.workers, thread_name_prefix="code-reward")

    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[RewardResult]:
        jobs = [make_job(p, r, self.config.default_language) for p, r in zip(prompts, responses)]
        stop_early = not self.config.partial_credit
        judged = self.executor.map(
            lambda job: judge_job(self.sandbox, job, self.limits, stop_early), jobs
        )
        results = []
        for prompt, (verdicts, status) in zip(prompts, judged):
            total, passed = len(verdicts), sum(verdicts)
            if total == 0:
                results.append(RewardResult(0.0, {"error": f"prompt {prompt.id} has no tests"}))
                continue
            score = passed / total if self.config.partial_credit else float(passed == total)
            info = {"passed": passed, "total": total, "status": status}
            results.append(RewardResult(score, info))
        return results


def code_reward(**options) -> CodeReward:
    """The `code` reward's factory: `options` are `CodeRewardConfig` fields."""
    valid = {f.name for f in fields(CodeRewardConfig)}
    if unknown := set(options) - valid:
        raise TypeError(f"code reward: unknown option(s) {sorted(unknown)}; valid: {sorted(valid)}")
    return CodeReward(CodeRewardConfig(**options))
