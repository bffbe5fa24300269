#!/usr/bin/env bash
# Set up, warm up a tiny model with SFT on chain-of-thought traces, then run RL on the default
# config and print held-out pass@1 after SFT and after RL.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc)}"
.venv/bin/longrl sft configs/sft.toml
.venv/bin/longrl train configs/default.toml
