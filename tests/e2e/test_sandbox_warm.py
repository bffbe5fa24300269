"""Warm mode: Python runs served by pre-forked interpreters inside long-lived jails.

The same hostile programs must get the same verdicts as cold runs, workers are recycled after N
runs, and nothing is left behind when the service stops.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from longrl.sandbox.isolate import Isolator, Limits
from longrl.sandbox.server import ServerConfig, WarmPythonPool
from tests.e2e.test_sandbox_service import HOSTILE, _verdict, call, serve

WARM_HOSTILE = dict(HOSTILE)
# In a warm jail pid 1 is the interpreter pool's zygote, not dumb-init; the run still sees
# nothing outside its jail.
WARM_HOSTILE["proc_snoop"] = (
    (
        "import os\npids = [int(p) for p in os.listdir('/proc') if p.isdigit()]\n"
        "assert len(pids) == 2 and 1 in pids and os.getpid() in pids, pids"
    ),
    {"ok"},
)


def test_workers_are_recycled_and_leave_nothing():
    # First in the file: the module's warm service (whose workers would count as leftovers
    # of this process) does not exist yet.
    isolator = Isolator()
    pool = WarmPythonPool(isolator, slots=1, runs_per_worker=3)
    first = pool.idle.queue[0]
    outputs = [pool.run(f"print({i})", "", Limits()).stdout for i in range(7)]
    assert outputs == [b"%d\n" % i for i in range(7)]
    assert pool.idle.queue[0] is not first  # replaced after 3 runs
    pool.close()
    deadline = time.monotonic() + 3
    while isolator.leftovers() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert isolator.leftovers() == []


@pytest.fixture(scope="module")
def warm_service():
    with serve(ServerConfig(workers=2, queue=400, warm_python=25, default_memory_mb=128)) as (url, app):
        yield url, app


def test_plain_runs_use_the_warm_pool(warm_service):
    url, _ = warm_service
    reply = call(
        url, lambda c: c.run_code("import sys\nprint(sys.stdin.read()[::-1])", stdin="abc")
    )
    assert reply["status"] == "Success" and reply["run_result"]["stdout"] == "cba\n"
    assert reply["run_result"]["execution_time"] < 0.5
    # Runs with files (or another memory limit) still go to a cold jail.
    files = call(url, lambda c: c.run_code("print(open('f.txt').read())", files={"f.txt": b"cold"}))
    assert files["run_result"]["stdout"] == "cold\n"


def test_exit_codes_and_exceptions(warm_service):
    url, _ = warm_service
    exit3 = call(url, lambda c: c.run_code("import sys\nprint('x')\nsys.exit(3)"))
    assert exit3["run_result"]["return_code"] == 3 and exit3["run_result"]["stdout"] == "x\n"
    boom = call(url, lambda c: c.run_code("raise ValueError('boom')"))
    assert (
        boom["run_result"]["return_code"] == 1
        and "ValueError: boom" in boom["run_result"]["stderr"]
    )


def test_hostile_battery_warm(warm_service):
    url, _ = warm_service

    async def battery(client):
        return await asyncio.gather(
            *(client.run_code(code, run_timeout=2.0) for code, _ in WARM_HOSTILE.values())
        )

    for (name, (_, expected)), reply in zip(WARM_HOSTILE.items(), call(url, battery)):
        assert _verdict(reply) in expected, (name, reply["run_result"])
    assert call(url, lambda c: c.health(deep=True))["status"] == "ok"


def test_nothing_survives_between_runs(warm_service):
    url, _ = warm_service
    call(
        url,
        lambda c: c.run_code(
            "import subprocess\nopen('/tmp/secret', 'w').write('x')\n"
            "subprocess.Popen(['sleep', '100'])"
        ),
    )
    probe = (
        "import os\nprint(os.path.exists('/tmp/secret'), "
        "len([p for p in os.listdir('/proc') if p.isdigit()]))"
    )

    async def probes(client):  # hit both workers
        return await asyncio.gather(*(client.run_code(probe) for _ in range(4)))

    assert {r["run_result"]["stdout"] for r in call(url, probes)} == {"False 2\n"}
