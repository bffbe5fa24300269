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
* `GET /health` — pool state and isolation mode; `?deep=true` also lists what runs left behind
  (`leftovers`, empty when healthy) and runs a program.

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
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from longrl.sandbox.isolate import (
    DEFAULT_COMPILE_LIMITS,
    Execution,
    IoCase,
    Isolator,
    Limits,
    SandboxConfig,
)
from longrl.sandbox.warm import ZYGOTE, WarmPythonPool  # noqa: F401 - re-exported here

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
    warm_python: int = 0  # runs per pre-forked Python worker before recycling (0: off), warm.py
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
        if deep:  # what earlier runs left behind (none, in a healthy service), then a test run
            body["leftovers"] = iso.leftovers()
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
                code_run = await self.pool.submit(
                    self.isolator.run_code, req.language, req.code, stdin=stdin, files=files,
                    limits=limits, compile_limits=compile_limits,
                )  # fmt: skip
                compiled, runs = code_run.compile, [code_run.run] if code_run.run else []
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
        cases = [IoCase(t.stdin, t.expected_stdout) for t in req.tests]
        try:
            batch = await self.pool.submit(
                self.isolator.run_tests, req.language, req.code, cases,
                files=_decode_files(req.files),
                limits=_limits(self.config, req.run_timeout, req.memory_limit_MB),
                compile_limits=_limits(self.config, req.compile_timeout, -1, True),
                stop_on_first_failure=req.stop_on_first_failure,
            )  # fmt: skip
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from exc
        compiled, runs = batch.compile, batch.runs
        results = [
            TestResult(passed=passed, run_result=_command_result(r))
            for passed, r in zip(batch.passed, runs)
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
