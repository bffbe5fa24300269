"""The sandbox seam: what a caller may ask of a sandbox, and the results both sides share.

Two implementations: `isolate.Isolator` (jails in this process) and `client.HttpSandbox`
(the `longrl sandbox serve` service over HTTP). The code reward (`rewards/code.py`) judges
against this protocol only, so a local run and a remote run are judged by the same code.

The judging rule of a stdin/stdout case also lives here, once (`case_passed`): the run ended
cleanly and its output equals the expected output line by line after trimming trailing
whitespace (`outputs_match`). The server applies it for `/run_tests`, the isolator for its
`run_tests`, and a client receives the verdicts.

What crosses HTTP: of `Limits`, only `wall_s` and `memory_mb` are sent (SandboxFusion's
`run_timeout` and `memory_limit_MB`); the service applies its own values of the rest and clamps
both to its maxima (`server.ServerConfig`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from longrl.sandbox.limits import Execution, Limits


@dataclass
class CodeRun:
    """A program's compile step (None for interpreted languages) and its run (None if the
    compile failed)."""

    compile: Execution | None
    run: Execution | None

    @property
    def ok(self) -> bool:
        return self.run is not None and self.run.ok and (self.compile is None or self.compile.ok)


@dataclass(frozen=True)
class IoCase:
    """One stdin/stdout test case; `expected_stdout=None` runs the case without judging it."""

    stdin: str | bytes = ""
    expected_stdout: str | None = None


@dataclass
class IoRun:
    """One program over many `IoCase`s: the compile step (None for Python), the runs made, and
    per run whether it passed (None where the case had no expected output).

    `runs` is shorter than the cases when the compile failed (no runs) or the batch stopped at
    its first failure; a case without a run counts as failed (`verdicts`)."""

    compile: Execution | None
    runs: list[Execution] = field(default_factory=list)
    passed: list[bool | None] = field(default_factory=list)

    def verdicts(self, n_cases: int) -> list[bool]:
        """One bool per case: passed, or not (failed, unjudged, or never run)."""
        return [bool(p) for p in self.passed[:n_cases]] + [False] * (n_cases - len(self.passed))

    @property
    def compile_failed(self) -> bool:
        return self.compile is not None and not self.compile.ok


def outputs_match(actual: str | bytes, expected: str | bytes) -> bool:
    """The judge's comparison: equal line by line after trimming trailing whitespace on each
    line and blank lines at both ends (what most contest judges accept)."""

    def lines(text: str | bytes) -> list[str]:
        text = text.decode(errors="replace") if isinstance(text, bytes) else text
        return [line.rstrip() for line in text.strip().splitlines()]

    return lines(actual) == lines(expected)


def case_passed(case: IoCase, run: Execution) -> bool | None:
    """The verdict of one case: None when it has no expected output, else ok and matching."""
    if case.expected_stdout is None:
        return None
    return run.ok and outputs_match(run.stdout, case.expected_stdout)


class Sandbox(Protocol):
    """Runs untrusted programs. Implementations are safe to call from many threads at once."""

    def run_code(
        self,
        language: str,
        code: str,
        *,
        stdin: str | bytes = "",
        files: dict[str, bytes] | None = None,
        limits: Limits | None = None,
    ) -> CodeRun:
        """Compile (if needed) and run `code` once, `files` beside it in its working directory."""
        ...

    def run_tests(
        self,
        language: str,
        code: str,
        cases: Sequence[IoCase],
        *,
        files: dict[str, bytes] | None = None,
        limits: Limits | None = None,
        stop_on_first_failure: bool = False,
    ) -> IoRun:
        """Compile once, run once per case (each in a fresh jail), judge with `case_passed`;
        stop after the first case that fails or does not end cleanly when asked to."""
        ...
