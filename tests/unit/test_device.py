"""Device resolution and precision choices (longrl.device)."""

import pytest
import torch

from longrl.config import TrainConfig
from longrl.device import attention_implementation, autocast, compute_dtype, resolve_device


def test_auto_is_cuda_when_available_else_cpu():
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == want
    assert TrainConfig().device == "auto"
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error():
    for name in ("cuda", "cuda:1"):
        with pytest.raises(ValueError, match=r"no CUDA device here .* train.device = \"auto\" or \"cpu\""):
            resolve_device(name)


def test_unknown_device_names_are_refused():
    for name in ("gpu", "mps", "tpu:0"):
        with pytest.raises(ValueError, match="use auto, cpu, cuda or cuda:N"):
            resolve_device(name)


def test_compute_dtype_and_autocast():
    assert compute_dtype("float32") == torch.float32 and compute_dtype("bfloat16") == torch.bfloat16
    with pytest.raises(ValueError, match="loss scaling"):
        compute_dtype("float16")
    cpu = torch.device("cpu")
    a, b = torch.ones(2, 2), torch.ones(2, 2)
    with autocast(cpu, torch.bfloat16):
        assert (a @ b).dtype == torch.bfloat16
    with autocast(cpu, torch.float32):
        assert (a @ b).dtype == torch.float32
    assert attention_implementation(cpu) == "sdpa"
