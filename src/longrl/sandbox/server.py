"""The code-execution service (SPEC §8 "Code sandbox"): HTTP in front of `isolate.Isolator`.

Endpoints
* `POST /run_code` — SandboxFusion's request and response shape (code, language,
  compile_timeout, run_timeout, memory_limit_MB, stdin, files as base64; answers status
  Success/Failed/SandboxError with compile_result/run_result {status Finished/TimeLimitExceeded/
  Error, execution_time, return_code, stdout, stderr}). Extra fields (`verdict`, `cpu_time`,
  `memory_peak_MB`) say *why* a run ended; SandboxFusion clients ignore them.
* `POST /run_tests` — one program over many stdin test cases (compiled once), each case in a
  fresh jail; optional expected outputs are compared (whitespace-normalised) and the response
  says which cases passed.
* `GET /health` — pool state and isolation mode; `?deep=true` also runs a program.

Back-pressure: at most `workers` runs execute at once and at most `queue` more wait; beyond that
the service answers 429 with Retry-After at once instead of queueing without bound, so a
flooded service stays responsive and clients (see `client.py`) back off and retry. 503 means
the service is shutting down or its isolation broke.

Deviation from SandboxFusion: `fetch_files` is accepted but returns nothing (each run's /tmp is
a tmpfs that dies with the jail), and only the languages in `isolate.LANGUAGES` are offered.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import dataclasses
import json
import logging
import os
import queue
import signal
import struct
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from longrl.sandbox.isolate import (
    DEFAULT_COMPILE_LIMITS,
    Execution,
    Isolator,
    Limits,
    SandboxConfig,
    discard_stub,
    outputs_match,
)

log = logging.getLogger(__name__)


@dataclass
class ServerConfig:
    """The service's knobs; the limits a request may ask for are clamped to the max_* fields."""

    host: str = "127.0.0.1"  # bind address; the service runs untrusted code, keep it private
    port: int = 8080
    workers: int = max(1, (os.cpu_count() or 1))  # concurrent runs (jails)
    queue: int = 0  # runs allowed to wait for a worker; 0 means 4 x workers
    default_memory_mb: int = 512  # when a request says memory_limit_MB = -1
    max_memory_mb: int = 4096
    max_run_timeout_s: float = 60.0
    max_compile_timeout_s: float = 60.0
    max_output_bytes: int = 1 << 20  # per stream
    max_tests_per_request: int = 1000
    warm_python: int = 0  # pre-forked Python interpreters per worker slot (0: off), see warm.py
    allow_unsafe: bool = False  # serve WITHOUT isolation when it cannot be had (never for real)

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"ServerConfig.workers must be >= 1, got {self.workers}")
        if self.queue <= 0:
            self.queue = 4 * self.workers


# -- the wire format (SandboxFusion-compatible) ------------------------------------------------


class RunCodeRequest(BaseModel):
    code: str = Field(..., description="the program's source")
    language: str = Field(..., description="python or cpp")
    compile_timeout: float = Field(10, description="seconds, compiled languages only")
    run_timeout: float = Field(10, description="wall-clock seconds for the run")
    memory_limit_MB: int = Field(-1, description="-1: the server default")
    stdin: str | None = None
    files: dict[str, str | None] = Field({}, description="relative path -> base64 content")
    fetch_files: list[str] = Field(
        [], description="accepted for compatibility; nothing is returned"
    )


class CommandRunResult(BaseModel):
    status: Literal["Finished", "Error", "TimeLimitExceeded"]
    execution_time: float | None = None
    return_code: int | None = None
    stdout: str | None = None
    stderr: str | None = None
    # longrl extras: the precise verdict and the resources used
    verdict: str | None = None
    cpu_time: float | None = None
    memory_peak_MB: float | None = None


class RunCodeResponse(BaseModel):
    status: Literal["Success", "Failed", "SandboxError"]
    message: str = ""
    compile_result: CommandRunResult | None = None
    run_result: CommandRunResult | None = None
    executor_pod_name: str | None = None
    files: dict[str, str] = {}


class TestCase(BaseModel):
    __test__ = False  # not a pytest class

    stdin: str = ""
    expected_stdout: str | None = None  # None: just run, do not judge


class RunTestsRequest(BaseModel):
    code: str
    language: str
    tests: list[TestCase]
    compile_timeout: float = 10
    run_timeout: float = 10
    memory_limit_MB: int = -1
    files: dict[str, str | None] = {}
    stop_on_first_failure: bool = False


class TestResult(BaseModel):
    __test__ = False

    passed: bool | None  # None when no expected output was given
    run_result: CommandRunResult


class RunTestsResponse(BaseModel):
    status: Literal["Success", "Failed", "SandboxError"]
    message: str = ""
    compile_result: CommandRunResult | None = None
    results: list[TestResult] = []
    passed: int = 0
    total: int = 0


def _command_result(e: Execution) -> CommandRunResult:
    status = {"timeout": "TimeLimitExceeded", "sandbox_error": "Error"}.get(e.status, "Finished")
    return CommandRunResult(
        status=status,
        execution_time=round(e.wall_s, 4),
        return_code=e.return_code,
        stdout=e.stdout.decode(errors="replace"),
        stderr=e.stderr.decode(errors="replace"),
        verdict=e.status,
        cpu_time=e.cpu_s,
        memory_peak_MB=e.memory_peak_mb,
    )


def _overall(compiled: Execution | None, runs: list[Execution]) -> tuple[str, str]:
    steps = ([compiled] if compiled else []) + runs
    for step in steps:
        if step.status == "sandbox_error":
            return "SandboxError", step.message
    return ("Success", "") if steps and all(s.ok for s in steps) else ("Failed", "")


# -- the pool ---------------------------------------------------------------------------------


class Overloaded(Exception):
    pass


class WorkerPool:
    """A bounded thread pool: `workers` jails at once, `queue` waiting, the rest refused."""

    def __init__(self, isolator: Isolator, workers: int, queue: int):
        self.isolator = isolator
        self.workers, self.capacity = workers, workers + queue
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="sandbox")
        self.admitted = 0  # running + waiting
        self.completed = 0
        self.rejected = 0
        self.closing = False

    async def submit(self, fn, *args, **kwargs):
        if self.closing:
            raise HTTPException(503, "sandbox service is shutting down")
        if self.admitted >= self.capacity:
            self.rejected += 1
            raise Overloaded()
        self.admitted += 1  # single event-loop thread: no lock needed
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.executor, lambda: fn(*args, **kwargs))
        finally:
            self.admitted -= 1
            self.completed += 1

    def state(self) -> dict[str, Any]:
        return {
            "workers": self.workers,
            "capacity": self.capacity,
            "admitted": self.admitted,
            "running": min(self.admitted, self.workers),
            "queued": max(0, self.admitted - self.workers),
            "completed": self.completed,
            "rejected": self.rejected,
        }

    def close(self) -> None:
        self.closing = True
        self.executor.shutdown(wait=True, cancel_futures=True)


# -- warm mode: pre-forked Python interpreters ----------------------------------------------------

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
        argv = isolator._jail_argv(  # the same jail as a cold run, long-lived
            [isolator.config.python, "-S", "/opt/zygote.py"],
            dataclasses.replace(limits, wall_s=86400.0),
            [(Path(zygote_path), "/opt/zygote.py")],
            [],
            None,
            self.stub.log_w_number,
        )
        argv.remove(
            "/.init"
        )  # the zygote is pid 1 itself: it reaps, and cannot be killed from inside
        self.proc, self.group = self.stub.proc, self.stub.group
        self.proc.stdin.write(("\n".join(argv) + "\n\n").encode())
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


# -- the app ----------------------------------------------------------------------------------


def _decode_files(files: dict[str, str | None]) -> dict[str, bytes]:
    out = {}
    for name, content in files.items():
        try:
            out[name] = base64.b64decode(content or "", validate=True)
        except binascii.Error as exc:
            raise HTTPException(422, f"files[{name!r}] is not valid base64: {exc}") from exc
    return out


def _limits(
    config: ServerConfig, timeout: float, memory_mb: int, compile_step: bool = False
) -> Limits:
    max_t = config.max_compile_timeout_s if compile_step else config.max_run_timeout_s
    memory = config.default_memory_mb if memory_mb <= 0 else min(memory_mb, config.max_memory_mb)
    if compile_step:
        memory = max(memory, DEFAULT_COMPILE_LIMITS.memory_mb)
        base = DEFAULT_COMPILE_LIMITS
    else:
        base = Limits()
    return Limits(
        wall_s=max(0.1, min(timeout, max_t)),
        memory_mb=memory,
        pids=base.pids,
        tmp_mb=base.tmp_mb,
        file_mb=base.file_mb,
        output_bytes=config.max_output_bytes,
    )


class _Service:
    """The endpoints' logic; `create_app` routes HTTP to these methods."""

    def __init__(self, config: ServerConfig, isolator: Isolator):
        self.config, self.isolator = config, isolator
        self.pool = WorkerPool(isolator, config.workers, config.queue)
        self.warm = None
        if config.warm_python > 0:
            self.warm = WarmPythonPool(
                isolator, config.workers, config.warm_python, memory_mb=config.default_memory_mb
            )
        self.started = time.time()

    def close(self) -> None:
        self.pool.close()
        if self.warm is not None:
            self.warm.close()

    async def health(self, deep: bool = Query(False)) -> dict[str, Any]:
        iso = self.isolator
        body = {
            "status": "ok",
            "isolation": "unsafe" if iso.unsafe else "nsjail",
            "cgroup": None if iso.unsafe else ("v2" if iso.cgroups.v2 else "v1"),
            "uptime_s": round(time.time() - self.started, 1),
            "warm_python": self.config.warm_python,
            **self.pool.state(),
        }
        if deep:
            probe = await self.pool.submit(iso.run_code, "python", "print(6*7)")
            if probe.run is None or probe.run.stdout != b"42\n":
                raise HTTPException(503, f"self-test failed: {probe}")
        return body

    async def run_code(self, req: RunCodeRequest) -> RunCodeResponse:
        files = _decode_files(req.files)
        limits = _limits(self.config, req.run_timeout, req.memory_limit_MB)
        stdin = req.stdin or ""
        try:
            if self.warm is not None and self.warm.accepts(req.language, files, limits):
                compiled, runs = (
                    None,
                    [await self.pool.submit(self.warm.run, req.code, stdin, limits)],
                )
            else:
                compile_limits = _limits(self.config, req.compile_timeout, -1, True)
                compiled, runs = await self.pool.submit(
                    self.isolator.run_tests, req.language, req.code, [stdin], files=files,
                    limits=limits, compile_limits=compile_limits,
                )  # fmt: skip
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from exc
        status, message = _overall(compiled, runs)
        return RunCodeResponse(
            status=status,
            message=message,
            compile_result=_command_result(compiled) if compiled else None,
            run_result=_command_result(runs[0]) if runs else None,
        )

    async def run_tests(self, req: RunTestsRequest) -> RunTestsResponse:
        if len(req.tests) > self.config.max_tests_per_request:
            raise HTTPException(422, f"{len(req.tests)} tests exceed max_tests_per_request="
                                     f"{self.config.max_tests_per_request}")  # fmt: skip
        expected = [t.expected_stdout for t in req.tests]

        def passed(i: int, run: Execution) -> bool | None:
            return (
                None if expected[i] is None else run.ok and outputs_match(run.stdout, expected[i])
            )

        def keep_going(i: int, run: Execution) -> bool:
            return not req.stop_on_first_failure or (run.ok and passed(i, run) is not False)

        try:
            compiled, runs = await self.pool.submit(
                self.isolator.run_tests, req.language, req.code, [t.stdin for t in req.tests],
                files=_decode_files(req.files),
                limits=_limits(self.config, req.run_timeout, req.memory_limit_MB),
                compile_limits=_limits(self.config, req.compile_timeout, -1, True),
                keep_going=keep_going,
            )  # fmt: skip
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from exc
        results = [
            TestResult(passed=passed(i, r), run_result=_command_result(r))
            for i, r in enumerate(runs)
        ]
        status, message = _overall(compiled, runs)
        if status == "Success" and any(r.passed is False for r in results):
            status = "Failed"
        return RunTestsResponse(
            status=status,
            message=message,
            compile_result=_command_result(compiled) if compiled else None,
            results=results,
            passed=sum(bool(r.passed) for r in results),
            total=len(req.tests),
        )


async def _overloaded(_request, _exc) -> JSONResponse:
    headers = {"Retry-After": "1"}
    return JSONResponse({"detail": "sandbox busy, retry later"}, status_code=429, headers=headers)


def create_app(config: ServerConfig | None = None, isolator: Isolator | None = None) -> FastAPI:
    """The service as an ASGI app; `app.state.service` holds the pool and the isolator."""
    config = config or ServerConfig()
    isolator = isolator or Isolator(SandboxConfig(allow_unsafe=config.allow_unsafe))
    if not isolator.unsafe:
        isolator.cgroups.sweep()  # run groups left by a crashed server
    service = _Service(config, isolator)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        service.close()

    app = FastAPI(title="longrl sandbox", version="1", lifespan=lifespan)
    app.state.service = service
    app.add_exception_handler(Overloaded, _overloaded)
    app.add_api_route("/health", service.health, methods=["GET"])
    app.add_api_route(
        "/run_code", service.run_code, methods=["POST"], response_model=RunCodeResponse
    )
    app.add_api_route(
        "/run_tests", service.run_tests, methods=["POST"], response_model=RunTestsResponse
    )
    return app


def serve_main(argv: list[str]) -> int:
    """`longrl sandbox serve`: run the service with uvicorn until interrupted."""
    import uvicorn

    defaults = ServerConfig()
    parser = argparse.ArgumentParser(
        prog="longrl sandbox serve", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default=defaults.host, help="bind address (default: %(default)s)")
    parser.add_argument("--port", type=int, default=defaults.port)
    parser.add_argument(
        "--workers",
        type=int,
        default=defaults.workers,
        help="concurrent jails (default: CPU count)",
    )
    parser.add_argument(
        "--queue", type=int, default=0, help="runs that may wait (default: 4 x workers)"
    )
    parser.add_argument(
        "--memory-mb", type=int, default=defaults.default_memory_mb, help="default memory limit"
    )
    parser.add_argument(
        "--warm-python",
        type=int,
        default=0,
        metavar="N",
        help="serve Python from pre-forked interpreters recycled after N runs (0: off)",
    )
    parser.add_argument(
        "--allow-unsafe",
        action="store_true",
        help="if isolation is unavailable, run code WITHOUT it (dangerous; for laptops only)",
    )
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    config = ServerConfig(
        host=args.host,
        port=args.port,
        workers=args.workers,
        queue=args.queue,
        default_memory_mb=args.memory_mb,
        warm_python=args.warm_python,
        allow_unsafe=args.allow_unsafe,
    )
    logging.basicConfig(level=args.log_level.upper())
    uvicorn.run(create_app(config), host=config.host, port=config.port, log_level=args.log_level)
    return 0
