"""Benchmark: our math verifier against plain math-verify on the labelled suite (SPEC §6).

Runs every (prediction, reference) pair of tests/unit/math_pairs.py through
  - ours:     `longrl.rewards.math.check_equivalence` (one worker subprocess, 5 s deadline),
  - baseline: `math_verify.verify(parse(gold), parse(pred))` with its defaults, in this process,
  - the baseline again with both answers wrapped in `$...$` (how math-verify expects LaTeX),
and prints accuracy, false positives (said equal, label says different), false negatives and
checks per second (wall clock, and per CPU-second of all the processes a verifier uses), with
ratios against the baseline measured in the same run. Each verifier
first runs once over a digit-shifted copy of the suite, timed as "(cold)"; the suite itself is
then timed with warm parsers (as in a long-running worker) but no cached answers. Not a test:
timings depend on the machine; tests/unit/test_math_reward.py asserts the suite.

    OMP_NUM_THREADS=1 python benchmarks/math_verifier.py [--repeat 1]
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import time
from collections import defaultdict
from pathlib import Path

from longrl.rewards import math_worker
from longrl.rewards.math import check_equivalence

PAIRS_FILE = Path(__file__).resolve().parents[1] / "tests" / "unit" / "math_pairs.py"


def load_pairs() -> list[tuple[str, str, bool, str]]:
    spec = importlib.util.spec_from_file_location("math_pairs", PAIRS_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.PAIRS


def shifted(pairs):
    """The suite with every digit replaced by the next one: same structures, different strings.

    Warming up on it fills parser caches (ANTLR's prediction DFA, the way a long-running worker
    is warm) without any answer cache hits in the timed pass.
    """
    shift = str.maketrans("0123456789", "1234567890")
    return [(pred.translate(shift), gold.translate(shift), label, cls)
            for pred, gold, label, cls in pairs]  # fmt: skip


def worker_cpu_seconds() -> float:
    """CPU time used so far by our verifier's worker processes (Linux /proc)."""
    total = 0.0
    for pool in math_worker._POOLS.values():  # private: a benchmark may look inside
        for worker in pool._workers:
            fields = Path(f"/proc/{worker._proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime+stime
    return total


def run(name: str, verifier, pairs, repeat: int, cpu_seconds=time.process_time) -> dict:
    """Time `verifier(pred, gold) -> bool` over the suite; count its errors by kind and class.

    `cpu_seconds()` is the CPU time of every process the verifier uses: on a shared machine,
    checks per CPU-second is the capacity of one process; checks per second depends on the load.
    """
    verifier("x", "y")  # start-up (our worker process) is not timed
    started = time.perf_counter()
    for pred, gold, _, _ in shifted(pairs):
        verifier(pred, gold)
    cold_per_s = len(pairs) / (time.perf_counter() - started)
    started, cpu_started = time.perf_counter(), cpu_seconds()
    for _ in range(repeat):
        said = [bool(verifier(pred, gold)) for pred, gold, _, _ in pairs]
    elapsed, cpu = time.perf_counter() - started, cpu_seconds() - cpu_started
    stats = {"name": name, "checks_per_s": repeat * len(pairs) / elapsed, "fp": 0, "fn": 0,
             "cold_per_s": cold_per_s, "per_cpu_s": repeat * len(pairs) / max(cpu, 1e-9)}
    stats["wrong_by_class"] = defaultdict(int)
    for verdict, (_, _, label, cls) in zip(said, pairs):
        if verdict != label:
            stats["fp" if verdict else "fn"] += 1
            stats["wrong_by_class"][cls] += 1
    stats["correct"] = len(pairs) - stats["fp"] - stats["fn"]
    return stats


def print_table(rows: list[dict], total: int, baseline: dict) -> None:
    print(f"{'verifier':<25}{'accuracy':>15}{'FP':>4}{'FN':>4}{'checks/s':>9}{'(cold)':>7}"
          f"{'per CPU-s':>10}{'acc ratio':>10}{'speed ratio':>12}")  # fmt: skip
    for row in rows:
        accuracy = f"{row['correct']}/{total} {row['correct'] / total:.1%}"
        print(f"{row['name']:<25}{accuracy:>15}{row['fp']:>4}{row['fn']:>4}"
              f"{row['checks_per_s']:>9.1f}{row['cold_per_s']:>7.1f}{row['per_cpu_s']:>10.1f}"
              f"{row['correct'] / baseline['correct']:>10.2f}"
              f"{row['checks_per_s'] / baseline['checks_per_s']:>12.2f}")  # fmt: skip


def print_classes(rows: list[dict], pairs) -> None:
    sizes = defaultdict(int)
    for *_, cls in pairs:
        sizes[cls] += 1
    print("\nerrors by class (pairs in class): " + "  ".join(r["name"] for r in rows))
    for cls in sorted(sizes):
        print(f"  {cls:<12}({sizes[cls]:>3})  " + "  ".join(
            f"{r['wrong_by_class'].get(cls, 0):>{len(r['name'])}}" for r in rows))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1, help="passes over the suite per verifier")
    args = parser.parse_args()
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    from math_verify import parse, verify

    pairs = load_pairs()

    plain = run("math-verify (plain)", lambda p, g: verify(parse(g), parse(p)), pairs, args.repeat)
    wrapped = run("math-verify ($-wrapped)",
                  lambda p, g: verify(parse(f"${g}$"), parse(f"${p}$")), pairs, args.repeat)
    ours = run("longrl (1 worker)", lambda p, g: check_equivalence(p, g).equal, pairs, args.repeat,
               cpu_seconds=lambda: time.process_time() + worker_cpu_seconds())
    rows = [plain, wrapped, ours]
    print(f"{len(pairs)} labelled pairs ({sum(p[2] for p in pairs)} equivalent), "
          f"repeat={args.repeat}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}; ratios against math-verify (plain)\n")  # fmt: skip
    print_table(rows, len(pairs), plain)
    print_classes(rows, pairs)


if __name__ == "__main__":
    main()
