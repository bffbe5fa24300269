"""What one sandboxed run may use (`Limits`) and what it did (`Execution`).

Shared by every sandbox module: `isolate` (cold runs), `launcher` (their I/O and verdicts),
`cgroups` (which writes the limits into a run's cgroup) and `warm` (pre-forked Python).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Verdict = Literal["ok", "error", "timeout", "memory", "output_limit", "sandbox_error"]

# Inside the jail the program is uid 1000; outside it is this otherwise unused host uid, so an
# escaped process owns nothing and can signal nothing on the host.
JAIL_UID = 1000
HOST_UID = 99999


class IsolationUnavailable(RuntimeError):
    """Isolation cannot be set up here; the message says what is missing and how to fix it."""


@dataclass(frozen=True)
class Limits:
    """Resource limits of one run. All of them hold at once."""

    wall_s: float = 10.0  # wall-clock deadline; the whole run is killed when it passes
    cpu_s: float | None = None  # CPU seconds (RLIMIT_CPU, rounded up); None: same as wall_s
    memory_mb: int = 512  # cgroup memory limit (RSS + page cache + tmpfs pages)
    pids: int = 64  # cgroup pids limit: processes + threads
    cpus: float = 1.0  # cgroup CPU quota, in cores
    tmp_mb: int = 64  # size of the private /tmp (and of /dev/shm)
    file_mb: int = 64  # largest file a process may write (RLIMIT_FSIZE)
    open_files: int = 64  # RLIMIT_NOFILE
    stack_mb: int = 64  # RLIMIT_STACK; contest solutions recurse deep
    output_bytes: int = 1 << 20  # cap per stream; exceeding it kills the run

    def __post_init__(self) -> None:
        for name in ("wall_s", "memory_mb", "pids", "cpus", "tmp_mb", "output_bytes"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Limits.{name} must be > 0, got {getattr(self, name)!r}")

    @property
    def cpu_seconds(self) -> int:
        return max(1, math.ceil(self.cpu_s if self.cpu_s is not None else self.wall_s))


@dataclass
class Execution:
    """What one run did. `status` is the verdict; `return_code` is 128+n for death by signal n."""

    status: Verdict
    return_code: int | None
    stdout: bytes = b""
    stderr: bytes = b""
    wall_s: float = 0.0
    cpu_s: float | None = None
    memory_peak_mb: float | None = None
    pids_limited: bool = False  # a fork/clone failed on the pids limit
    message: str = ""  # for sandbox_error: what broke; otherwise a short human note

    @property
    def ok(self) -> bool:
        return self.status == "ok"
