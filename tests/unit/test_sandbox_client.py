"""The sandbox client's retry policy, and `HttpSandbox`'s translation of replies into the
isolator's results, against a scripted transport (no server needed)."""

from __future__ import annotations

import asyncio
import json
import socket

import httpx
import pytest

from concurrent.futures import ThreadPoolExecutor

from longrl.sandbox import Execution, IoCase, IoRun, Limits
from longrl.sandbox.client import HttpSandbox, SandboxClient, SandboxClientError
from longrl.sandbox.server import serve_main


def scripted(*replies: tuple[int, dict]):
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        status, body = replies[min(len(calls), len(replies)) - 1]
        return httpx.Response(
            status, json=body, headers={"Retry-After": "0"} if status == 429 else {}
        )

    return httpx.MockTransport(handler), calls


def run(coro):
    return asyncio.run(coro)


def test_retries_back_pressure_then_succeeds():
    transport, calls = scripted((429, {}), (503, {}), (200, {"status": "Success"}))

    async def go():
        async with SandboxClient("http://sandbox", transport=transport, backoff_s=0.001) as client:
            return await client.run_code("print(1)", stdin="x", files={"a.txt": b"hi"})

    assert run(go()) == {"status": "Success"}
    assert len(calls) == 3
    sent = json.loads(calls[0].content)
    assert (
        sent["files"] == {"a.txt": "aGk="} and sent["stdin"] == "x" and sent["language"] == "python"
    )
    assert sent["memory_limit_MB"] == -1  # SandboxFusion's field names


def test_client_errors_are_not_retried():
    transport, calls = scripted((422, {"detail": "language 'cobol' is not supported"}))

    async def go():
        async with SandboxClient("http://sandbox", transport=transport) as client:
            await client.run_code("x", "cobol")

    with pytest.raises(SandboxClientError, match="422"):
        run(go())
    assert len(calls) == 1


def test_gives_up_after_the_retries_on_a_dead_server():
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def go():
        async with SandboxClient(f"http://127.0.0.1:{port}", retries=2, backoff_s=0.001) as client:
            await client.health()

    with pytest.raises(SandboxClientError, match="after 3 attempts: ConnectError"):
        run(go())


def test_serve_main_has_a_help():
    with pytest.raises(SystemExit) as exit_info:
        serve_main(["--help"])
    assert exit_info.value.code == 0


def _result(**fields) -> dict:
    return {"status": "Finished", "execution_time": 0.25, "return_code": 0, "stdout": "",
            "stderr": "", **fields}  # fmt: skip


def test_http_sandbox_run_code_sends_the_limits_and_reads_the_verdict():
    run = _result(stdout="42\n", verdict="ok", cpu_time=0.5, memory_peak_MB=7.0)
    transport, calls = scripted((200, {"status": "Success", "run_result": run}))
    sandbox = HttpSandbox("http://sandbox", transport=transport)
    try:
        got = sandbox.run_code("python", "print(42)", stdin=b"in", files={"f": b"x"},
                               limits=Limits(wall_s=2.5, memory_mb=300))  # fmt: skip
    finally:
        sandbox.close()
    assert got.compile is None and got.ok
    assert got.run == Execution("ok", 0, b"42\n", b"", wall_s=0.25, cpu_s=0.5, memory_peak_mb=7.0)
    sent = json.loads(calls[0].content)
    assert (sent["language"], sent["code"], sent["stdin"]) == ("python", "print(42)", "in")
    assert (sent["run_timeout"], sent["memory_limit_MB"]) == (2.5, 300)
    assert sent["files"] == {"f": "eA=="}


@pytest.mark.parametrize(
    "reply, status",
    [  # a SandboxFusion server sends no `verdict`: it is read from status and return code
        ({"status": "Success", "run_result": _result()}, "ok"),
        ({"status": "Failed", "run_result": _result(return_code=1)}, "error"),
        ({"status": "Failed", "run_result": _result(status="TimeLimitExceeded")}, "timeout"),
        ({"status": "Failed", "run_result": _result(verdict="memory", return_code=137)}, "memory"),
        ({"status": "SandboxError", "message": "jail broke"}, "sandbox_error"),
    ],
)
def test_http_sandbox_verdicts(reply, status):
    transport, _ = scripted((200, reply))
    sandbox = HttpSandbox("http://sandbox", transport=transport)
    try:
        assert sandbox.run_code("python", "x").run.status == status
    finally:
        sandbox.close()


def test_http_sandbox_run_tests_from_many_threads():
    reply = {
        "status": "Failed",
        "compile_result": _result(),
        "results": [
            {"passed": True, "run_result": _result(stdout="3\n", verdict="ok")},
            {"passed": False, "run_result": _result(stdout="5\n", verdict="ok")},
        ],
    }
    transport, calls = scripted((200, reply))
    sandbox = HttpSandbox("http://sandbox", transport=transport)
    cases = [IoCase("1 2", "3"), IoCase(b"2 2", "4"), IoCase("9 9")]
    try:
        with ThreadPoolExecutor(8) as pool:
            batches = list(pool.map(lambda _: sandbox.run_tests(
                "cpp", "int main(){}", cases, stop_on_first_failure=True), range(16)))  # fmt: skip
    finally:
        sandbox.close()
    assert len(calls) == 16 and all(b == batches[0] for b in batches)
    batch: IoRun = batches[0]
    assert batch.compile.ok and [r.stdout for r in batch.runs] == [b"3\n", b"5\n"]
    assert batch.passed == [True, False] and batch.verdicts(3) == [True, False, False]
    sent = json.loads(calls[0].content)
    assert sent["tests"] == [{"stdin": "1 2", "expected_stdout": "3"},
                             {"stdin": "2 2", "expected_stdout": "4"},
                             {"stdin": "9 9", "expected_stdout": None}]  # fmt: skip
    assert sent["stop_on_first_failure"] is True and sent["memory_limit_MB"] == -1
