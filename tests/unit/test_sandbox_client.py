"""The sandbox client's retry policy, against a scripted transport (no server needed)."""

from __future__ import annotations

import asyncio
import json
import socket

import httpx
import pytest

from longrl.sandbox.client import SandboxClient, SandboxClientError
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
