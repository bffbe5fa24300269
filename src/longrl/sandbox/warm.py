"""Warm mode: Python runs served by pre-forked interpreters inside long-lived jails.

A cold run pays for a fresh jail *and* a fresh interpreter. In warm mode (`longrl sandbox serve
--warm-python N`) each worker slot keeps one long-lived jail, built exactly like a cold run's
(same launcher, cgroup, namespaces, mounts, seccomp policy, rlimits), whose pid 1 is `ZYGOTE`:
a trusted Python program that forks one child per request to run the untrusted code in an
already-started interpreter, then kills every other process of the jail and empties `/tmp` and
`/dev/shm` before the next request. A worker is recycled after N runs or when it dies.

What warm mode gives up against a cold run (docs/sandbox.md): consecutive runs of one worker
share its jail, so a run could find traces of earlier runs in the interpreter's freed memory,
and the memory peak is not reported per run. Runs with extra files or another memory limit
always go to a cold jail (`WarmPythonPool.accepts`).

Never run ZYGOTE outside its jail: it kills with kill(-1), which from pid 1 of the jail's own
pid namespace reaches only the jail, but anywhere else reaches every process the caller may
signal. It refuses to start unless it is pid 1.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import queue
import signal
import struct
import subprocess
import tempfile
from pathlib import Path

from longrl.sandbox.isolate import Execution, Isolator, Limits, discard_stub

# The trusted program that runs as pid 1 of a long-lived jail. It reads framed requests on fd 0,
# forks one child per request to exec the untrusted code in an already-started interpreter (no
# interpreter start-up: that is the speed-up), collects the child's capped output under a
# deadline, then kills every other process of the jail (kill(-1) from pid 1 spares only itself)
# and empties /tmp before the next request. It answers framed results on fd 1.
ZYGOTE = r"""
import base64, io, json, os, resource, select, shutil, signal, struct, sys, time, traceback
# Warm imports: what solutions commonly import is already loaded when a run forks.
import atexit, bisect, collections, functools, heapq, itertools, math, random, re, string, typing
if os.getpid() != 1:
    # kill(-1) below is only safe as pid 1 of the jail's own pid namespace; anywhere else it
    # would signal every process of the host the caller may signal.
    sys.exit("zygote: refusing to run outside a jail (must be pid 1 of its own pid namespace)")
CTL_IN, CTL_OUT = os.dup(0), os.dup(1)

def read_exact(n):
    data = b""
    while len(data) < n:
        chunk = os.read(CTL_IN, n - len(data))
        if not chunk:
            sys.exit(0)
        data += chunk
    return data

def kill_others(spare=None):
    # SIGKILL every process of the jail but this one (kill(-1) from pid 1), or, with `spare`,
    # every process but this one and `spare` (whose exit status is still to be collected).
    if spare is None:
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) not in (1, spare):
            try:
                os.kill(int(entry), signal.SIGKILL)
            except ProcessLookupError:
                pass

def send(obj):
    body = json.dumps(obj).encode()
    os.write(CTL_OUT, struct.pack(">I", len(body)) + body)

def child(req, rin, wout, werr):
    os.setsid()
    for src, dst in ((rin, 0), (wout, 1), (werr, 2)):
        os.dup2(src, dst)
    os.closerange(3, 1024)
    resource.setrlimit(resource.RLIMIT_CPU, (req["cpu"], req["cpu"]))
    os.chdir("/tmp/run")
    def stream(fd, mode):
        return io.TextIOWrapper(io.FileIO(fd, mode, closefd=False))
    sys.stdin, sys.stdout, sys.stderr = stream(0, "r"), stream(1, "w"), stream(2, "w")
    sys.argv = ["main.py"]
    status = 0
    try:
        namespace = {"__name__": "__main__", "__builtins__": __builtins__}
        exec(compile(req["code"], "main.py", "exec"), namespace)
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            status = exc.code or 0
        else:  # sys.exit("message"): printed, status 1, as the interpreter does
            print(exc.code, file=sys.stderr)
            status = 1
    except BaseException:
        traceback.print_exc()
        status = 1
    try:
        atexit._run_exitfuncs()
        sys.stdout.flush(); sys.stderr.flush()
    finally:
        os._exit(status & 0xFF)

def pump(req, pid, win, rout, rerr):
    # Like a cold run, the run ends when its main process exits: then stragglers are killed,
    # which closes the output pipes. pidfd_open gives a descriptor readable at that exit.
    buffers, is_open, reason = {rout: bytearray(), rerr: bytearray()}, {rout, rerr}, None
    pidfd = os.pidfd_open(pid)
    pending, deadline = req["stdin"].encode(), time.monotonic() + req["wall"]
    if not pending:
        os.close(win); win = -1
    while is_open:
        left = deadline - time.monotonic()
        if left <= 0:
            reason = "timeout"; break
        watch = [*is_open, pidfd] if pidfd >= 0 else list(is_open)
        readable, writable, _ = select.select(watch, [win] if win >= 0 else [], [], left)
        if pidfd in readable:
            kill_others(pid)
            os.close(pidfd); pidfd = -1
        for fd in readable:
            if fd not in is_open:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                is_open.discard(fd); continue
            buffers[fd] += chunk
            if len(buffers[fd]) > req["cap"]:
                reason = "output_limit"
        if reason:
            break
        if writable:
            try:
                n = os.write(win, pending[:65536]); pending = pending[n:]
            except OSError:
                pending = b""
            if not pending:
                os.close(win); win = -1
    for fd in (win, pidfd):
        if fd >= 0:
            os.close(fd)
    return buffers[rout][: req["cap"]], buffers[rerr][: req["cap"]], reason

def serve():
    while True:
        req = json.loads(read_exact(struct.unpack(">I", read_exact(4))[0]))
        os.makedirs("/tmp/run", exist_ok=True)
        rin, win = os.pipe(); rout, wout = os.pipe(); rerr, werr = os.pipe()
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            child(req, rin, wout, werr)
        for fd in (rin, wout, werr):
            os.close(fd)
        os.set_blocking(win, False)
        out, err, reason = pump(req, pid, win, rout, rerr)
        if reason:
            kill_others()
        _, status, usage = os.wait4(pid, 0)
        wall = time.monotonic() - start
        kill_others()  # whatever the run left behind
        try:
            while True:  # reap them all (SIGKILL is asynchronous): the next run sees none
                os.waitpid(-1, 0)
        except ChildProcessError:
            pass
        for fd in (rout, rerr):
            os.close(fd)
        for d in ("/tmp", "/dev/shm"):  # the next run starts with empty scratch space
            for entry in os.listdir(d):
                path = os.path.join(d, entry)
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.unlink(path)
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
        send({"rc": code, "reason": reason, "wall": wall, "cpu": usage.ru_utime + usage.ru_stime,
              "stdout": base64.b64encode(out).decode(),
              "stderr": base64.b64encode(err).decode()})

serve()
"""


class _WarmWorker:
    """One long-lived jail running ZYGOTE, started by a launcher in its own fresh cgroup."""

    def __init__(self, isolator: Isolator, limits: Limits, zygote_path: str):
        self.runs = 0
        self.stub = isolator._stubs.take(limits)  # the same launcher as cold runs
        args = isolator._run_args(  # the same jail as a cold run, long-lived
            [isolator.config.python, "-S", "/opt/zygote.py"],
            dataclasses.replace(limits, wall_s=86400.0),
            [(Path(zygote_path), "/opt/zygote.py")],
            [],
            None,
            init=False,  # the zygote is pid 1 itself: it reaps, and cannot be killed from inside
        )
        self.proc, self.group = self.stub.proc, self.stub.group
        self.proc.stdin.write(("\n".join(args) + "\n\n").encode())
        self.proc.stdin.flush()

    def run(self, code: str, stdin: str, limits: Limits) -> Execution:
        oom_before = self.group.stats()["oom_kill"]
        request = json.dumps(
            {
                "code": code,
                "stdin": stdin,
                "wall": limits.wall_s,
                "cpu": limits.cpu_seconds,
                "cap": limits.output_bytes,
            }
        ).encode()
        self.runs += 1
        try:
            self.proc.stdin.write(struct.pack(">I", len(request)) + request)
            self.proc.stdin.flush()
            header = self.proc.stdout.read(4)
            reply = json.loads(self.proc.stdout.read(struct.unpack(">I", header)[0]))
        except (OSError, struct.error, ValueError) as exc:
            self.runs = 10**9  # retire this worker
            oom = self.group.stats()["oom_kill"] > oom_before
            return Execution(
                "memory" if oom else "sandbox_error",
                None,
                message=f"warm worker died ({exc!r}): {self._last_words()}",
            )
        stdout, stderr = base64.b64decode(reply["stdout"]), base64.b64decode(reply["stderr"])
        result = Execution("error", reply["rc"], stdout, stderr, reply["wall"], cpu_s=reply["cpu"])
        cpu_killed = (
            reply["rc"] in (128 + signal.SIGXCPU, 128 + signal.SIGKILL)
            and reply["cpu"] >= 0.8 * limits.cpu_seconds
        )
        if reply["reason"] == "timeout" or cpu_killed:
            result.status = "timeout"
        elif reply["reason"] == "output_limit":
            result.status = "output_limit"
        elif self.group.stats()["oom_kill"] > oom_before:
            result.status = "memory"
        elif reply["rc"] == 0:
            result.status = "ok"
        return result

    def _last_words(self) -> str:
        """What the zygote printed to stderr before it died (it only writes there to die)."""
        os.set_blocking(self.proc.stderr.fileno(), False)
        try:
            return (self.proc.stderr.read() or b"")[-2000:].decode(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.stdin.close()  # the zygote exits at end of input
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=2)
        discard_stub(self.stub)


class WarmPythonPool:
    """`slots` warm workers; each is recycled after `runs_per_worker` runs (or when it dies).

    Serves plain Python runs (no extra files, the pool's memory limit). What warm mode gives up
    against a cold run (docs/sandbox.md): consecutive runs of one worker share its jail, so a
    run could find traces of earlier runs in the interpreter's freed memory; /tmp is emptied
    and every process is killed between runs, and a worker lives for at most N runs.
    """

    def __init__(self, isolator: Isolator, slots: int, runs_per_worker: int, memory_mb: int = 512):
        if isolator.unsafe:
            raise ValueError("warm mode needs isolation; it is not offered in unsafe mode")
        self.isolator, self.runs_per_worker = isolator, runs_per_worker
        self.limits = Limits(memory_mb=memory_mb, pids=64)
        self._dir = tempfile.TemporaryDirectory(
            prefix="longrl-warm-", dir=isolator.config.work_root
        )
        self.zygote = os.path.join(self._dir.name, "zygote.py")
        Path(self.zygote).write_text(ZYGOTE)
        os.chmod(self._dir.name, 0o755)
        os.chmod(self.zygote, 0o644)
        self.idle: queue.Queue[_WarmWorker] = queue.Queue()
        for _ in range(slots):
            self.idle.put(_WarmWorker(isolator, self.limits, self.zygote))

    def accepts(self, language: str, files: dict[str, bytes], limits: Limits | None = None) -> bool:
        return (
            language in ("python", "python3", "py")
            and not files
            and (limits is None or limits.memory_mb == self.limits.memory_mb)
        )

    def run(self, code: str, stdin: str, limits: Limits) -> Execution:
        worker = self.idle.get()
        try:
            return worker.run(code, stdin, limits)
        finally:
            if worker.runs >= self.runs_per_worker:
                worker.close()
                worker = _WarmWorker(self.isolator, self.limits, self.zygote)
            self.idle.put(worker)

    def close(self) -> None:
        while not self.idle.empty():
            self.idle.get().close()
        self._dir.cleanup()
