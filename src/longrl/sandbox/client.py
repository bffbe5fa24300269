"""Async client for the sandbox service (`server.py`), with timeouts, retries and back-pressure.

    async with SandboxClient("http://127.0.0.1:8080") as sandbox:
        reply = await sandbox.run_code("print(1)", "python")
        batch = await sandbox.run_tests(code, "cpp", [{"stdin": "1 2", "expected_stdout": "3"}])

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
from typing import Any, Self

import httpx

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
