"""Secure code execution (SPEC §8 "Code sandbox"): isolation, an HTTP service, a client, and
CYaRon test-case generation (SPEC §6). See docs/sandbox.md.

* `isolate`  — one untrusted run in a fresh jail (nsjail + seccomp + cgroup + rlimits); built
  from `limits`, `cgroups` and `launcher`.
* `warm`     — Python runs forked from pre-started interpreters inside long-lived jails.
* `server`   — FastAPI service with a bounded pool; SandboxFusion-compatible `/run_code`.
* `client`   — async httpx client with retries and back-pressure.
* `testgen`  — generate and validate test cases by majority vote of reference solutions.
"""

from longrl.sandbox.isolate import (
    CodeRun,
    Execution,
    IsolationUnavailable,
    Isolator,
    Limits,
    SandboxConfig,
)

__all__ = ["CodeRun", "Execution", "IsolationUnavailable", "Isolator", "Limits", "SandboxConfig"]
