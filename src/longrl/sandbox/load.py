"""A load test of the sandbox service: many requests at once, ordinary and hostile programs mixed.

    python -m longrl.sandbox.load --requests 1000 --concurrency 32          # starts its own service
    python -m longrl.sandbox.load --url http://127.0.0.1:8080 --requests 1000

Each request draws one program from `PROGRAMS` (seeded): most are ordinary programs with a known
output; the rest are hostile (a fork bomb, a memory bomb, an endless loop, endless output). A
request counts as answered when the service returns a result for it; the service's back-pressure
answers (429 with Retry-After) are retried by the client, and how many there were is read from the
service's own counter (`/health`: `rejected`). An ordinary program must print its expected output;
a hostile one must end with one of its expected verdicts.

With `--url` left out, the service runs as a child process (`longrl sandbox serve`), so its memory
can be followed: its resident set size (`VmRSS`) is sampled while the load runs. The jails' memory
is not in it (each run has its own cgroup limit); this is the service's own footprint, which must
not grow with the number of requests. After the load, `/health?deep=true` lists what runs left
behind (processes of the jail's user, run cgroups, run directories): it must be empty.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from longrl.sandbox.client import SandboxClient

# name -> (weight, program, run_timeout s, memory MB, the verdicts it may end with, expected stdout).
# Under load a starved ordinary program may take longer, hence its generous time limit; a hostile
# one ends by its own limit (or, starved, by the deadline first).
PROGRAMS: dict[str, tuple[float, str, float, int, frozenset[str], str | None]] = {
    "hello": (0.3, "print('hello')", 10.0, 128, frozenset({"ok"}), "hello\n"),
    "compute": (0.2, "print(sum(i * i for i in range(200000)))", 10.0, 128, frozenset({"ok"}),
                f"{sum(i * i for i in range(200000))}\n"),
    "stdin": (0.1, "import sys\nprint(sum(map(int, sys.stdin.read().split())))", 10.0, 128,
              frozenset({"ok"}), "6\n"),
    "fork_bomb": (0.1, "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
                  1.0, 128, frozenset({"TimeLimitExceeded", "error"}), None),
    "memory_bomb": (0.1, "a = []\nwhile True:\n    a.append(bytearray(16 << 20))", 1.0, 64,
                    frozenset({"memory", "TimeLimitExceeded"}), None),
    "spin": (0.1, "while True:\n    pass", 1.0, 128, frozenset({"TimeLimitExceeded"}), None),
    "huge_output": (0.1, "while True:\n    print('y' * 65536)", 1.0, 128,
                    frozenset({"output_limit", "TimeLimitExceeded"}), None),
}


def verdict(reply: dict) -> str:
    """`ok`, `TimeLimitExceeded`, or the service's reason (`memory`, `output_limit`, `error`, ...)."""
    run = reply.get("run_result") or {}
    return run["status"] if run.get("status") == "TimeLimitExceeded" else run.get("verdict", reply.get("status", "?"))


@dataclass
class LoadReport:
    requests: int
    concurrency: int
    answered: int = 0
    unanswered: int = 0  # the client gave up (retries exhausted, transport error): must be 0
    wrong: int = 0  # answered, but not with the program's expected output or verdict: must be 0
    rejected_429: int = 0  # back-pressure answers the client retried
    wall_s: float = 0.0
    latency_p50_s: float = 0.0  # from sending a request to its answer, 429 retries included
    latency_p99_s: float = 0.0
    verdicts: dict[str, dict[str, int]] = field(default_factory=dict)  # program -> verdict -> count
    failures: list[str] = field(default_factory=list)  # the first few wrong or unanswered requests
    service_rss_mb_start: float | None = None
    service_rss_mb_peak: float | None = None
    service_rss_mb_end: float | None = None
    leftovers: list[str] | None = None

    def ok(self) -> bool:
        return (self.answered == self.requests and not self.wrong and not self.unanswered
                and self.leftovers == [])


async def send_load(url: str, requests: int, concurrency: int, seed: int = 0) -> LoadReport:
    """Send `requests` programs drawn from `PROGRAMS`, at most `concurrency` at once."""
    rng = random.Random(seed)
    names = rng.choices(list(PROGRAMS), weights=[p[0] for p in PROGRAMS.values()], k=requests)
    report = LoadReport(requests, concurrency)
    tally: dict[str, Counter] = {name: Counter() for name in PROGRAMS}
    latencies: list[float] = []
    # retries: enough that back-pressure alone never exhausts them (backoff is capped at 2 s)
    async with SandboxClient(url, max_in_flight=concurrency, retries=200, max_backoff_s=2.0,
                             timeout_s=300.0) as client:
        before = (await client.health())["rejected"]

        slots = asyncio.Semaphore(concurrency)

        async def one(i: int, name: str) -> None:
            _, code, timeout, memory, verdicts, stdout = PROGRAMS[name]
            async with slots:  # latency counts from sending, not from waiting for a slot here
                start = time.perf_counter()
                try:
                    reply = await client.run_code(code, stdin="1 2 3", run_timeout=timeout, memory_limit_mb=memory)
                except Exception as exc:  # noqa: BLE001 - every failure is counted and shown
                    report.unanswered += 1
                    report.failures.append(f"request {i} ({name}): no answer: {type(exc).__name__}: {exc}")
                    return
                latencies.append(time.perf_counter() - start)
            report.answered += 1
            got = verdict(reply)
            tally[name][got] += 1
            out = (reply.get("run_result") or {}).get("stdout")
            if got not in verdicts or (stdout is not None and out != stdout):
                report.wrong += 1
                report.failures.append(f"request {i} ({name}): verdict {got!r}, stdout {str(out)[:80]!r}")

        start = time.perf_counter()
        await asyncio.gather(*(one(i, name) for i, name in enumerate(names)))
        report.wall_s = time.perf_counter() - start
        report.rejected_429 = (await client.health())["rejected"] - before
        deadline = time.monotonic() + 10  # killed jails may take a moment to be reaped
        while True:
            report.leftovers = (await client.health(deep=True)).get("leftovers")
            if not report.leftovers or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
    latencies.sort()
    if latencies:
        report.latency_p50_s = latencies[len(latencies) // 2]
        report.latency_p99_s = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    report.verdicts = {name: dict(c) for name, c in tally.items() if c}
    del report.failures[10:]
    return report


def _rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@contextlib.contextmanager
def spawned_service(workers: int, queue: int = 0, log_path: str | os.PathLike | None = None,
                    extra: Sequence[str] = ()) -> Iterator[tuple[str, int]]:
    """`longrl sandbox serve` as a child process on a free local port, its output to `log_path`
    (default: discarded); yields (url, pid) once `/health` answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "longrl.cli", "sandbox", "serve", "--port", str(port), "--workers", str(workers),
            "--queue", str(queue), "--log-level", "warning", *extra]
    with open(log_path or os.devnull, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

    def tail() -> str:
        return f": {Path(log_path).read_text()[-2000:]}" if log_path else ""

    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the sandbox service exited with status {proc.returncode} at start{tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the sandbox service did not start within 60 s{tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.1)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_load(url: str | None, requests: int, concurrency: int, workers: int, queue: int,
             seed: int = 0) -> LoadReport:
    """The whole load test: against `url`, or a service started here whose memory is followed."""
    if url:
        return asyncio.run(send_load(url, requests, concurrency, seed))
    with spawned_service(workers, queue) as (url, pid):
        samples: list[float] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.1):
                if (rss := _rss_mb(pid)) is not None:
                    samples.append(rss)

        start_rss = _rss_mb(pid)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            report = asyncio.run(send_load(url, requests, concurrency, seed))
        finally:
            stop.set()
            sampler.join()
        report.service_rss_mb_start, report.service_rss_mb_end = start_rss, _rss_mb(pid)
        report.service_rss_mb_peak = max(samples, default=start_rss)
        return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m longrl.sandbox.load", description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="", help="a running service (default: start one here)")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="jails at once, a started service")
    parser.add_argument("--queue", type=int, default=8, help="runs that may wait, a started service "
                        "(below --concurrency, so back-pressure is exercised)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    report = run_load(args.url or None, args.requests, args.concurrency, args.workers, args.queue, args.seed)
    print(json.dumps(asdict(report), indent=2))
    return 0 if report.ok() else 1


if __name__ == "__main__":
    raise SystemExit(main())
