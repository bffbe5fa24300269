"""How a cold run starts and ends: pre-spawned launchers, the run's I/O, its verdict.

A background thread keeps launchers ready: `sh` processes already moved into a *fresh* run
cgroup (on cgroup v1 that move waits for an RCU grace period, several ms, more under load; paid
ahead of time, off the critical path) that hold the constant head of nsjail's argv. A run takes
one, writes its limits into the group, and sends the rest of the argv on the launcher's stdin;
`sh` execs nsjail. `pump` then feeds stdin, collects capped stdout/stderr and nsjail's log under
the wall-clock deadline, and `verdict` turns exit code, streams and cgroup counters into an
`Execution`.

`run_unsafe` is the explicit opt-in fallback without isolation (`SandboxConfig.allow_unsafe`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from longrl.sandbox.cgroups import Cgroups, RunCgroup
from longrl.sandbox.limits import Execution, Limits

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Launchers

# Pre-spawned launchers. Moving a process into a cgroup (v1) waits for an RCU grace period,
# several ms, more on a loaded machine; paid on the critical path it halves throughput. So a
# background thread keeps a few `sh` processes ready, each already moved into a *fresh* run
# cgroup and holding the constant part of nsjail's argv (binary, log pipe, identity, seccomp
# policy, system mounts) as its positional parameters. A run takes one, sets its limits, and
# sends the rest of the argv (limits, its files, the program), one argument per line ending with
# an empty line, on the same stdin pipe that then carries the program's stdin: `read` consumes
# a pipe byte by byte, so it takes exactly the header (which is why the header is kept short).
# `sh` then execs nsjail; without a complete header it exits 97 instead.
_STUB_SCRIPT = (
    'while IFS= read -r a; do [ -n "$a" ] || exec "$@"; set -- "$@" "$a"; done; '
    'echo "longrl-stub: no complete jail header on stdin" >&2; exit 97'
)


@dataclass
class Stub:
    group: RunCgroup
    proc: subprocess.Popen
    log_r: int


class StubPool:
    """Keeps `size` stubs ready, each in its own fresh cgroup; refilled by a daemon thread.

    `prefix(log_fd)` is the constant head of nsjail's argv for a stub whose log pipe is `log_fd`.
    """

    def __init__(self, cgroups: Cgroups, size: int, prefix: Callable[[int], list[str]]):
        self.cgroups, self.size, self.prefix = cgroups, size, prefix
        self._ready: list[Stub] = []
        self._cond = threading.Condition()
        self._closed = False
        if size > 0:
            threading.Thread(target=self._refill, name="sandbox-stubs", daemon=True).start()

    def take(self, limits: Limits) -> Stub:
        with self._cond:
            stub = self._ready.pop() if self._ready else None
            self._cond.notify()
        stub = stub or self.spawn()
        try:
            self.cgroups.apply(stub.group, limits)
        except OSError:
            discard_stub(stub)
            raise
        return stub

    def spawn(self) -> Stub:
        group = self.cgroups.create(Limits())
        log_r, log_w = os.pipe()
        try:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", _STUB_SCRIPT, "longrl-stub", *self.prefix(log_w)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(log_w,),
                start_new_session=True,
                env={},
                close_fds=True,
            )
        except OSError:
            os.close(log_r)
            group.remove()
            raise
        finally:
            os.close(log_w)
        stub = Stub(group, proc, log_r)
        try:
            group.enter(proc.pid)  # before any header is sent, so before nsjail starts
        except OSError:
            discard_stub(stub)
            raise
        return stub

    def idle_groups(self) -> set[Path]:
        with self._cond:
            return {d for stub in self._ready for d in stub.group.dirs.values()}

    def _refill(self) -> None:
        while True:
            with self._cond:
                while not self._closed and len(self._ready) >= self.size:
                    self._cond.wait()
                if self._closed:
                    return
            try:
                stub = self.spawn()
            except OSError as exc:
                log.warning(
                    "sandbox: cannot pre-spawn a launcher (%s); runs will spawn their own", exc
                )
                time.sleep(1.0)
                continue
            with self._cond:
                self._ready.append(stub)

    def close(self) -> None:
        with self._cond:
            self._closed, stubs, self._ready = True, self._ready, []
            self._cond.notify_all()
        for stub in stubs:
            discard_stub(stub)


def discard_stub(stub: Stub) -> None:
    """Kill a stub's processes and remove its cgroup and pipes."""
    stub.group.kill_all()
    with contextlib.suppress(OSError):
        stub.proc.kill()  # not in the group if entering it failed
    for f in (stub.proc.stdin, stub.proc.stdout, stub.proc.stderr):
        with contextlib.suppress(OSError):
            f.close()
    stub.proc.wait()
    os.close(stub.log_r)
    stub.group.remove()


# ---------------------------------------------------------------------------------------------
# I/O: feed stdin, collect capped stdout/stderr, enforce the wall clock


@dataclass
class Streams:
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    log: bytearray = field(default_factory=bytearray)
    stop_reason: str | None = None  # "timeout" | "output_limit"


def pump(proc: subprocess.Popen, stdin: bytes, log_fd: int | None, limits: Limits, kill) -> Streams:
    """Shuttle bytes until every pipe closes; call `kill()` once on timeout or excess output."""
    streams = Streams()
    sel = selectors.DefaultSelector()
    sinks = {proc.stdout.fileno(): streams.stdout, proc.stderr.fileno(): streams.stderr}
    if log_fd is not None:
        sinks[log_fd] = streams.log
    for fd in sinks:
        sel.register(fd, selectors.EVENT_READ)
    pending = memoryview(stdin)
    stdin_fd = proc.stdin.fileno() if proc.stdin is not None else -1
    if stdin_fd >= 0:
        os.set_blocking(stdin_fd, False)
        sel.register(stdin_fd, selectors.EVENT_WRITE)
    deadline = time.monotonic() + limits.wall_s
    grace_end = None  # after a kill, give the pipes a moment to close, then stop waiting
    while sel.get_map():
        now = time.monotonic()
        if streams.stop_reason is None and now >= deadline:
            streams.stop_reason = "timeout"
            kill()
        if streams.stop_reason is not None:
            grace_end = grace_end or now + 2.0
            if now >= grace_end:
                break
        for key, _ in sel.select(timeout=max(0.0, min(deadline, grace_end or deadline) - now)):
            fd = key.fd
            if fd == stdin_fd:
                pending = feed(sel, proc, pending)
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                sel.unregister(fd)
                continue
            sink = sinks[fd]
            room = limits.output_bytes - len(sink) if fd != log_fd else 65536 - len(sink)
            sink += chunk[: max(room, 0)]
            if room < len(chunk) and fd != log_fd and streams.stop_reason is None:
                streams.stop_reason = "output_limit"
                kill()
    sel.close()
    return streams


def feed(sel: selectors.BaseSelector, proc: subprocess.Popen, pending: memoryview) -> memoryview:
    try:
        written = os.write(proc.stdin.fileno(), pending[:65536])
        pending = pending[written:]
    except BlockingIOError:
        return pending
    except (BrokenPipeError, OSError):  # the program stopped reading: fine, drop the rest
        pending = pending[:0]
    if not pending:
        sel.unregister(proc.stdin.fileno())
        proc.stdin.close()
    return pending


_CPU_KILLED = (128 + signal.SIGXCPU, 128 + signal.SIGKILL)  # RLIMIT_CPU: SIGXCPU, then SIGKILL


def verdict(rc: int, streams: Streams, stats: dict, limits: Limits, wall: float) -> Execution:
    """The run's `Execution`: exit code, streams and cgroup counters (or rusage) to a verdict."""
    log_text = streams.log.decode(errors="replace")
    cpu = float(stats["cpu_s"]) if stats["cpu_s"] >= 0 else None
    peak = stats["memory_peak"] / 2**20 if stats["memory_peak"] >= 0 else None
    rc = 128 - rc if rc < 0 else rc  # nsjail itself killed by signal n -> 128+n
    result = Execution("error", rc, bytes(streams.stdout), bytes(streams.stderr), wall, cpu, peak,
                       pids_limited=stats["pids_max_hits"] > 0)  # fmt: skip
    if rc == 255 and "[F]" in log_text and streams.stop_reason is None:
        result.status, result.return_code = "sandbox_error", None
        result.message = "nsjail failed: " + log_text.strip()[-2000:]
    elif streams.stop_reason == "output_limit":
        result.status = "output_limit"
        result.message = f"output exceeded {limits.output_bytes} bytes"
    elif streams.stop_reason == "timeout":
        result.status, result.message = "timeout", f"wall clock exceeded {limits.wall_s}s"
    elif stats["oom_kill"] > 0:
        result.status, result.message = "memory", f"memory limit {limits.memory_mb} MB exceeded"
    elif rc in _CPU_KILLED and (cpu or 0) >= 0.8 * limits.cpu_seconds:
        result.status, result.message = "timeout", f"CPU time exceeded {limits.cpu_seconds}s"
    elif rc == 0:
        result.status = "ok"
    return result


# ---------------------------------------------------------------------------------------------
# Unsafe fallback (explicit opt-in only)


def run_unsafe(
    argv,
    stdin: bytes,
    limits: Limits,
    binds,
    env: dict[str, str] | None,
    base_env: dict[str, str],
    work_root: str,
) -> Execution:
    """Run `argv` WITHOUT isolation: rlimits and a process-group kill only (explicit opt-in)."""
    with tempfile.TemporaryDirectory(prefix="longrl-sbx-unsafe-", dir=work_root) as cwd:
        for host, inside in binds:
            if inside.startswith("/tmp/"):
                dest = Path(cwd) / inside[len("/tmp/") :]
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(host, dest)

        def set_limits() -> None:
            mem = limits.memory_mb * 2**20
            resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
            resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds))
            resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_mb * 2**20,) * 2)
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

        run_env = dict(base_env)
        run_env["HOME"] = run_env["TMPDIR"] = cwd
        if env and "PYTHONPATH" in env:
            run_env["PYTHONPATH"] = os.pathsep.join(sys.path)
        start = time.monotonic()
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            # preexec_fn with threads around: set_limits makes only raw setrlimit calls.
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=set_limits,  # noqa: PLW1509
            start_new_session=True,
            env=run_env,
        )

        def kill() -> None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        with proc:
            streams = pump(proc, stdin, None, limits, kill=kill)
            kill()
            proc.wait()
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        stats = {
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "memory_peak": -1,
            "oom_kill": 0,
            "pids_max_hits": 0,
        }
        result = verdict(proc.returncode, streams, stats, limits, time.monotonic() - start)
        result.cpu_s = None  # RUSAGE_CHILDREN sums every child ever: not this run's
        return result
