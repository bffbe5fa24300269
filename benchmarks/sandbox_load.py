"""Sandbox under load: 1,000 requests at concurrency 32, ordinary and hostile programs mixed.

Starts `longrl sandbox serve` as a child process (2 jails at once, 8 waiting: far below the
concurrency, so the service must refuse with 429 and the client retry), runs the load test of
`longrl.sandbox.load` at each `--requests` size, and prints per size: requests answered,
unanswered and wrong (goal 0 and 0), 429 answers retried, wall time, latency p50/p99, the
service's resident memory at start, peak and end, and leftovers after the load (goal none). The
peak memory of the largest size over the smallest shows whether the service's footprint grows
with the number of requests (goal ~1.0).

    .venv/bin/python benchmarks/sandbox_load.py                        # 250, then 1000 requests
    .venv/bin/python benchmarks/sandbox_load.py --requests 1000 --workers 4 --queue 16
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from longrl.sandbox.load import PROGRAMS, run_load  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, nargs="+", default=[250, 1000])
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--queue", type=int, default=8)
    parser.add_argument("--json", default="", help="also write the reports to this file")
    args = parser.parse_args()
    print(f"programs (weight): {', '.join(f'{k} ({v[0]:g})' for k, v in PROGRAMS.items())}")
    print(f"service: {args.workers} jails at once, {args.queue} waiting; client concurrency {args.concurrency}\n")
    reports = []
    for n in args.requests:
        r = run_load(None, n, args.concurrency, args.workers, args.queue)
        reports.append(r)
        print(f"{n} requests: answered {r.answered}, unanswered {r.unanswered}, wrong {r.wrong}, "
              f"429 retried {r.rejected_429}; {r.wall_s:.0f} s ({n / r.wall_s:.1f} req/s), latency "
              f"p50 {r.latency_p50_s:.1f} s, p99 {r.latency_p99_s:.1f} s; service RSS start "
              f"{r.service_rss_mb_start:.0f} MB, peak {r.service_rss_mb_peak:.0f} MB, end "
              f"{r.service_rss_mb_end:.0f} MB; leftovers {len(r.leftovers or [])}")
        print("  verdicts: " + "; ".join(f"{k} {v}" for k, v in r.verdicts.items()))
        for failure in r.failures:
            print("  " + failure)
    if len(reports) > 1:
        small, large = reports[0], reports[-1]
        print(f"\npeak service RSS, {large.requests} requests / {small.requests}: "
              f"{large.service_rss_mb_peak / small.service_rss_mb_peak:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in reports], indent=2) + "\n")
    return 0 if all(r.ok() for r in reports) else 1


if __name__ == "__main__":
    raise SystemExit(main())
