"""Sandbox throughput: a trivial Python program through full isolation vs a bare subprocess.

Prints executions/s and median latency for
* bare      — `subprocess.run([python3, main.py])`, no isolation at all (the baseline);
* isolated  — `Isolator.run_code`: fresh nsjail + namespaces + seccomp + cgroup per run;
* warm      — `WarmPythonPool`: forked from pre-started interpreters inside long-lived jails;
each at the same concurrency, measured in this one run, and the ratios to bare. Goals (see
docs/sandbox.md): isolated >= 0.5x bare, warm >= 2x bare.

    .venv/bin/python benchmarks/sandbox_throughput.py --runs 200 --concurrency 2
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from longrl.sandbox.isolate import Isolator, Limits
from longrl.sandbox.server import WarmPythonPool

PROGRAM = "print(sum(range(10)))\n"


def measure(fn, runs: int, concurrency: int) -> tuple[float, float]:
    """(executions per second, median latency in ms) of `runs` calls on `concurrency` threads."""
    latencies: list[float] = []

    def timed(_):
        start = time.perf_counter()
        out = fn()
        latencies.append(time.perf_counter() - start)
        assert out == b"45\n", out

    for _ in range(concurrency):  # warm-up: page cache, first imports
        timed(None)
    latencies.clear()
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(timed, range(runs)))
    return runs / (time.perf_counter() - start), 1000 * statistics.median(latencies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument(
        "--recycle", type=int, default=100, help="warm: runs per interpreter pool worker"
    )
    args = parser.parse_args()

    isolator = Isolator()
    warm = WarmPythonPool(isolator, slots=args.concurrency, runs_per_worker=args.recycle)
    limits = Limits(wall_s=10)
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "main.py"
        script.write_text(PROGRAM)
        python = isolator.config.python
        modes = {
            "bare": lambda: (
                subprocess.run([python, str(script)], capture_output=True, check=False).stdout
            ),
            "isolated": lambda: isolator.run_code("python", PROGRAM, limits=limits).run.stdout,
            "warm": lambda: warm.run(PROGRAM, "", limits).stdout,
        }
        results = {name: measure(fn, args.runs, args.concurrency) for name, fn in modes.items()}
    warm.close()

    bare_rate = results["bare"][0]
    print(f"trivial Python program, {args.runs} runs per mode, concurrency {args.concurrency}")
    print(f"{'mode':<10}{'exec/s':>10}{'median ms':>12}{'x bare':>9}")
    for name, (rate, median) in results.items():
        print(f"{name:<10}{rate:>10.1f}{median:>12.2f}{rate / bare_rate:>9.2f}")
    print(
        f"goals: isolated >= 0.5x bare ({results['isolated'][0] / bare_rate:.2f}), "
        f"warm >= 2x bare ({results['warm'][0] / bare_rate:.2f})"
    )


if __name__ == "__main__":
    main()
