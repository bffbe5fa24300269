"""Run one benchmark measurement in a fresh Python process and return its JSON result.

vLLM changes process-wide state (thread settings, allocated caches) when it starts, so each
model is measured in a process of its own: the script re-runs itself with `--one NAME`, which
prints one `RESULT {...}` line.
"""

from __future__ import annotations

import json
import subprocess
import sys


def measure_in_subprocess(script: str, name: str, repeat: int, options: list[str] = ()) -> dict | None:
    """`script --one NAME --repeat N [options]` in a fresh process; its RESULT, or None (printed)."""
    run = subprocess.run([sys.executable, script, "--one", name, "--repeat", str(repeat), *options],
                         check=False, capture_output=True, text=True)
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    if run.returncode or not lines:
        print(f"{name}: failed\n{run.stderr[-3000:]}")
        return None
    return json.loads(lines[-1][len("RESULT "):])
