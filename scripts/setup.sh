#!/usr/bin/env bash
# Create .venv and install longrl with everything its tests need. Idempotent.
# torch==2.13.0 resolves to the CPU wheel that lies on this kind of machine's disk; on a GPU
# machine install the CUDA build of torch 2.13.0 into the venv first and pip keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# (the grep hides this machine's pip-config warnings about local mirror folders; pip's own exit
# status still stops the script)
pip_install() { .venv/bin/python -m pip install --quiet "$@" 2> >(grep -v "is ignored" >&2); }
pip_install -e ".[dev,math,data,ray,wandb,lora]"
.venv/bin/python -c "import longrl, torch, transformers; print(f'longrl ready: torch {torch.__version__}, transformers {transformers.__version__}')"
