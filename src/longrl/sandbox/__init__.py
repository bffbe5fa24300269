"""Secure code execution (SPEC §8 "Code sandbox"): isolation, an HTTP service, a client, and
CYaRon test-case generation (SPEC §6). See docs/sandbox.md.

* `protocol` — the `Sandbox` seam (`run_code`, `run_tests`) and the results both sides share.
* `isolate`  — one untrusted run in a fresh jail (nsjail + seccomp + cgroup + rlimits); built
  from `limits`, `cgroups` and `launcher`. `Isolator` is the local `Sandbox`.
* `warm`     — Python runs forked from pre-started interpreters inside long-lived jails.
* `server`   — FastAPI service with a bounded pool; SandboxFusion-compatible `/run_code`.
* `client`   — async httpx client with retries and back-pressure; `HttpSandbox`, the remote
  `Sandbox` on top of it.
* `testgen`  — generate and validate test cases by majority vote of reference solutions.
"""

from longrl.sandbox.isolate import IsolationUnavailable, Isolator, SandboxConfig
from longrl.sandbox.limits import Execution, Limits
from longrl.sandbox.protocol import CodeRun, IoCase, IoRun, Sandbox, case_passed, outputs_match

__all__ = ["CodeRun", "Execution", "IoCase", "IoRun", "IsolationUnavailable", "Isolator", "Limits",
           "Sandbox", "SandboxConfig", "case_passed", "outputs_match"]  # fmt: skip
