"""Clients of the sandbox service (`server.py`): async `SandboxClient` speaking the wire format,
and `HttpSandbox`, the blocking `protocol.Sandbox` seam on top of it.

    async with SandboxClient("http://127.0.0.1:8080") as sandbox:
        reply = await sandbox.run_code("print(1)", "python")          # SandboxFusion reply dict
        batch = await sandbox.run_tests(code, "cpp", [{"stdin": "1 2", "expected_stdout": "3"}])

    sandbox = HttpSandbox("http://127.0.0.1:8080")                     # from any thread
    sandbox.run_code("python", "print(1)").run.stdout                  # b"1\n", like Isolator

Retries: connection failures, timeouts and the service's back-pressure answers (429, 503) are
retried with exponential backoff and jitter, honouring Retry-After; anything else (e.g. 422, a
malformed request) is raised at once as `SandboxClientError`. `max_in_flight` bounds this
client's concurrent requests so one caller cannot flood the service with requests it would
only refuse.
"""

from __future__ import annotations

import asyncio
import base64
import random
import threading
import weakref
from collections.abc import Sequence
from typing import Any, Self

import httpx

from longrl.sandbox.limits import Execution, Limits
from longrl.sandbox.protocol import CodeRun, IoCase, IoRun

RETRY_STATUSES = {429, 502, 503, 504}


class SandboxClientError(RuntimeError):
    """The service answered with an error that retrying will not fix, or retries ran out."""


class SandboxClient:
    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8080",
        *,
        timeout_s: float = 120.0,  # per HTTP request, on top of the run's own time limits
        retries: int = 8,
        backoff_s: float = 0.1,  # first retry delay; doubles each time, capped at max_backoff_s
        max_backoff_s: float = 5.0,
        max_in_flight: int = 64,
        transport: httpx.AsyncBaseTransport | None = None,  # tests inject a mock transport
    ):
        self.base_url = base_url.rstrip("/")
        self.retries, self.backoff_s, self.max_backoff_s = retries, backoff_s, max_backoff_s
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout_s, connect=10.0),
            limits=httpx.Limits(
                max_connections=max_in_flight, max_keepalive_connections=max_in_flight
            ),
            transport=transport,
        )
        self._slots = asyncio.Semaphore(max_in_flight)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    # -- endpoints --------------------------------------------------------------------------------

    async def health(self, deep: bool = False) -> dict[str, Any]:
        return await self._request("GET", "/health", params={"deep": str(deep).lower()})

    async def run_code(
        self,
        code: str,
        language: str = "python",
        *,
        stdin: str = "",
        run_timeout: float = 10,
        compile_timeout: float = 10,
        memory_limit_mb: int = -1,
        files: dict[str, bytes] | None = None,
    ) -> dict[str, Any]:
        """POST /run_code (SandboxFusion shape); returns the response as a dict."""
        body = {
            "code": code,
            "language": language,
            "stdin": stdin,
            "run_timeout": run_timeout,
            "compile_timeout": compile_timeout,
            "memory_limit_MB": memory_limit_mb,
            "files": _encode(files),
        }
        return await self._request("POST", "/run_code", json=body)

    async def run_tests(
        self,
        code: str,
        language: str,
        tests: list[dict[str, str | None]],
        *,
        run_timeout: float = 10,
        compile_timeout: float = 10,
        memory_limit_mb: int = -1,
        stop_on_first_failure: bool = False,
        files: dict[str, bytes] | None = None,
    ) -> dict[str, Any]:
        """POST /run_tests: one program over `tests` = [{"stdin", "expected_stdout"}, ...]."""
        body = {
            "code": code,
            "language": language,
            "tests": tests,
            "run_timeout": run_timeout,
            "compile_timeout": compile_timeout,
            "memory_limit_MB": memory_limit_mb,
            "stop_on_first_failure": stop_on_first_failure,
            "files": _encode(files),
        }
        return await self._request("POST", "/run_tests", json=body)

    # -- transport --------------------------------------------------------------------------------

    async def _request(self, method: str, path: str, **kwargs) -> dict[str, Any]:
        last_error = "no attempt made"
        async with self._slots:
            for attempt in range(self.retries + 1):
                try:
                    response = await self._http.request(method, path, **kwargs)
                except (httpx.TransportError, httpx.TimeoutException) as exc:
                    last_error = f"{type(exc).__name__}: {exc}"
                    retry_after = None
                else:
                    if response.status_code < 400:
                        return response.json()
                    if response.status_code not in RETRY_STATUSES:
                        raise SandboxClientError(
                            f"{method} {self.base_url}{path} -> {response.status_code}: "
                            f"{response.text[:500]}"
                        )
                    last_error = f"HTTP {response.status_code}"
                    retry_after = _retry_after(response)
                if attempt < self.retries:
                    await asyncio.sleep(self._delay(attempt, retry_after))
        raise SandboxClientError(
            f"{method} {self.base_url}{path} failed after {self.retries + 1} attempts: {last_error}"
        )

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        delay = min(self.max_backoff_s, self.backoff_s * 2**attempt)
        if retry_after is not None:
            delay = min(self.max_backoff_s, max(delay, retry_after))
        return delay * random.uniform(0.5, 1.0)  # jitter: spread out a herd of retrying callers


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers.get("Retry-After", ""))
    except ValueError:
        return None


def _encode(files: dict[str, bytes] | None) -> dict[str, str]:
    return {name: base64.b64encode(data).decode() for name, data in (files or {}).items()}


# -- the Sandbox protocol over HTTP -------------------------------------------------------------


class HttpSandbox:
    """`protocol.Sandbox` served by `longrl sandbox serve` at `base_url`: blocking calls, safe
    from many threads at once (each call waits for its own request).

    One `SandboxClient` (its retries, back-pressure and `max_in_flight` bound) runs on a private
    event loop in a daemon thread. Replies become the `Execution`s an `Isolator` would have
    returned; a SandboxFusion server without longrl's `verdict` field is read from its
    `status` and `return_code`. `close()` stops the loop (also done when garbage-collected).
    """

    def __init__(self, base_url: str, *, compile_timeout_s: float = 10.0, **client_options):
        self.base_url = base_url
        self.compile_timeout_s = compile_timeout_s
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="sandbox-http", daemon=True
        )
        self._thread.start()
        self.client: SandboxClient = self._wait(_new_client(base_url, client_options))
        self._close = weakref.finalize(self, _stop, self._loop, self._thread, self.client)

    def run_code(
        self,
        language: str,
        code: str,
        *,
        stdin: str | bytes = "",
        files: dict[str, bytes] | None = None,
        limits: Limits | None = None,
    ) -> CodeRun:
        reply = self._wait(
            self.client.run_code(
                code, language, stdin=_text(stdin), files=files, **self._limits(limits)
            )
        )
        compiled, run = _execution(reply.get("compile_result")), _execution(reply.get("run_result"))
        if run is None and reply.get("status") == "SandboxError" and not _failed(compiled):
            run = Execution("sandbox_error", None, message=reply.get("message") or "")
        return CodeRun(compiled, run)

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
        tests = [{"stdin": _text(c.stdin), "expected_stdout": c.expected_stdout} for c in cases]
        reply = self._wait(
            self.client.run_tests(
                code, language, tests, files=files, stop_on_first_failure=stop_on_first_failure,
                **self._limits(limits),
            )  # fmt: skip
        )
        results = reply.get("results") or []
        return IoRun(
            _execution(reply.get("compile_result")),
            [_execution(r["run_result"]) for r in results],
            [r.get("passed") for r in results],
        )

    def close(self) -> None:
        self._close()

    def _limits(self, limits: Limits | None) -> dict[str, Any]:
        # Only these two limits travel (protocol.py); -1 asks for the service's default memory.
        return {
            "run_timeout": limits.wall_s if limits else Limits().wall_s,
            "memory_limit_mb": limits.memory_mb if limits else -1,
            "compile_timeout": self.compile_timeout_s,
        }

    def _wait(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()


async def _new_client(base_url: str, options: dict[str, Any]) -> SandboxClient:
    return SandboxClient(base_url, **options)  # made on the loop it will run on


def _stop(loop: asyncio.AbstractEventLoop, thread: threading.Thread, client: SandboxClient):
    if loop.is_closed() or not thread.is_alive():
        return
    try:
        asyncio.run_coroutine_threadsafe(client.close(), loop).result(timeout=5)
    except Exception:  # noqa: BLE001 - closing connections at exit; nothing left to save
        pass
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=5)
    if not thread.is_alive():
        loop.close()


_FUSION_STATUS = {"TimeLimitExceeded": "timeout", "Error": "sandbox_error"}


def _execution(result: dict[str, Any] | None) -> Execution | None:
    """A wire `CommandRunResult` as the `Execution` the isolator made."""
    if result is None:
        return None
    rc = result.get("return_code")
    status = result.get("verdict") or _FUSION_STATUS.get(
        result.get("status", ""), "ok" if rc == 0 else "error"
    )
    return Execution(
        status,
        rc,
        stdout=(result.get("stdout") or "").encode(),
        stderr=(result.get("stderr") or "").encode(),
        wall_s=result.get("execution_time") or 0.0,
        cpu_s=result.get("cpu_time"),
        memory_peak_mb=result.get("memory_peak_MB"),
    )


def _failed(compiled: Execution | None) -> bool:
    return compiled is not None and not compiled.ok


def _text(data: str | bytes) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else data
