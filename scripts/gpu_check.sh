#!/usr/bin/env bash
# GPU checks on a machine with one CUDA GPU: training figures first, then rollout figures, then
# the GPU-marked tests. Installs nothing and needs no network: longrl runs from src/ with the
# python on PATH (or $PYTHON). Each stage is bounded by `timeout`, so a stuck stage costs its own
# limit only; the whole script stays under ~8 minutes. Figures go to ${OUT:-/tmp/gpu_check}
# (<stage>.json and <stage>.log, summary.json) and are printed at the end.
# Without a CUDA GPU it says so and exits 0.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false

if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: no CUDA GPU found ($PYTHON: torch.cuda.is_available() is false or torch is absent); nothing to check"
    exit 0
fi
"$PYTHON" -c "import torch, transformers; print('gpu_check:', torch.cuda.get_device_name(), \
'torch', torch.__version__, 'transformers', transformers.__version__)" | tee "$OUT/env.log"

failed=()
stage() {  # stage NAME SECONDS COMMAND...: run under timeout, log to $OUT/NAME.log
    local name=$1 limit=$2; shift 2
    echo "== $name (at most ${limit}s)"
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - start))s"
    [ "$rc" -eq 0 ] || failed+=("$name(exit $rc)")
}

STAGES=${STAGES:-"train rollout partial tests loop"}  # e.g. STAGES=loop bash scripts/gpu_check.sh
wants() { [[ " $STAGES " == *" $1 "* ]]; }
bench=("$PYTHON" benchmarks/gpu_train.py --out "$OUT")  # an array: `timeout` cannot run a function
wants train && stage train 120 "${bench[@]}" --stage train
wants rollout && stage rollout 70 "${bench[@]}" --stage rollout
wants partial && stage partial 100 "${bench[@]}" --stage partial
# only the GPU tests' file: other test modules import extras absent on a bare GPU machine
wants tests && stage tests 90 "$PYTHON" -m pytest -q -m gpu -p no:cacheprovider tests/unit/test_gpu.py
# the whole RL loop with policy, engine and trainer on the GPU: a short SFT warm-up (on the CPU),
# then RL with train.device = cuda; its metrics.jsonl comes back as loop_metrics.jsonl
loop=("$PYTHON" -m longrl.cli)
wants loop && stage loop_sft 60 "${loop[@]}" sft configs/sft.toml "out_dir=$OUT/runs" steps=120 --no-progress
wants loop && stage loop 150 "${loop[@]}" train configs/default.toml "out_dir=$OUT/runs" \
    "model.path=$OUT/runs/sft/final" iterations=8 eval.every=0 eval.num_prompts=100 train.device=cuda --no-progress
wants loop && cp "$OUT/runs/rl/metrics.jsonl" "$OUT/loop_metrics.jsonl" 2>/dev/null

"$PYTHON" - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
summary = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json")) if p.stem != "summary"}
(out / "summary.json").write_text(json.dumps(summary, indent=1))
for row in summary.get("train", {}).get("rows", []):
    if row.get("oom"):
        print(f"train {row['length']:>6} tokens, chunk {row['logprob_chunk_tokens']}: out of memory")
    else:
        print(f"train {row['length']:>6} tokens, chunk {row['logprob_chunk_tokens']:>5}: {row['tokens_per_s']:8.0f} tok/s, "
              f"MFU {row['mfu']:.1%} (of {summary['train']['peak_tflops']:.0f} TFLOP/s), peak {row.get('peak_gb', 0):.1f} GB")
for row in summary.get("rollout", {}).get("rows", []):
    print(f"rollout {row['rows']:>4} rows: {row['tokens_per_s']:8.0f} tok/s, {row['step_ms']:.1f} ms/step")
p = summary.get("partial")
if p:
    print(f"partial vs full (long-tailed, {p['rows']} rows): {p['partial_tokens_per_s']:.0f} vs "
          f"{p['full_tokens_per_s']:.0f} sampled tok/s = {p['partial_over_full']:.2f}x")
print(f"figures: {out}/summary.json")
PY
if [ ${#failed[@]} -gt 0 ]; then
    echo "gpu_check: failed stages: ${failed[*]}"
    exit 1
fi
echo "gpu_check: all stages passed"
