#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite: unit, e2e and slow tiers.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup_sandbox.sh
bash scripts/setup_vllm.sh
exec .venv/bin/python -m pytest -q "$@"
