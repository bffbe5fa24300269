"""benchmarks/gpu_train.py's code path on CPU with tiny shapes, so the GPU run fails for no silly
reason; its FLOPs count by hand; and scripts/gpu_check.sh on a machine without a GPU."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gpu_train():
    spec = importlib.util.spec_from_file_location("gpu_train", ROOT / "benchmarks" / "gpu_train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_stage_runs_on_cpu_with_tiny_shapes(gpu_train, tmp_path):
    results = gpu_train.main(["--device", "cpu", "--tiny", "--out", str(tmp_path)])
    assert set(results) == {"train", "rollout", "partial"}
    rows = json.loads((tmp_path / "train.json").read_text())["rows"]
    assert [(r["length"], r["logprob_chunk_tokens"]) for r in rows] == [(128, 64), (128, 0), (256, 64), (256, 0)]
    # chunked and plain log-probs give the same loss
    assert rows[0]["loss"] == pytest.approx(rows[1]["loss"], abs=1e-5)
    assert all(r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1 for r in rows)
    assert [r["rows"] for r in json.loads((tmp_path / "rollout.json").read_text())["rows"]] == [2, 8]
    assert json.loads((tmp_path / "partial.json").read_text())["partial_over_full"] > 0


def test_flops_per_token_by_hand(gpu_train):
    args = gpu_train.parse_args(["--device", "cpu", "--tiny"])
    import torch

    model = gpu_train.build_model(args, torch.float32)
    # tiny: hidden 64, 2 layers, 4 heads of 16, 2 kv heads, intermediate 128, vocab 512, tied
    per_layer = (64 * 64 + 64) + 2 * (64 * 32 + 32) + 64 * 64 + 3 * 64 * 128 + 2 * 64  # q, k, v (biases), o, mlp, norms
    matmul = 2 * per_layer + 64 + 512 * 64  # + final norm + the (tied) LM head
    assert gpu_train.matmul_params(model) == matmul
    assert gpu_train.flops_per_token(model, 100) == 6 * matmul + 6 * 2 * 64 * 100


def test_gpu_check_says_there_is_no_gpu_and_exits_0(tmp_path):
    import os
    import subprocess
    import sys

    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: scripts/gpu_check.sh would run its stages")
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path)}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "no CUDA GPU found" in done.stdout
