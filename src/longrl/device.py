"""Where the trainer runs and in which precision (one device: CPU here, one GPU elsewhere).

Precision. With `model.dtype = "bfloat16"` the trainer keeps float32 *master weights* and runs
forward and backward under `torch.autocast(bfloat16)`; the optimizer (AdamW) state is float32
too. The alternative, bf16 parameters with float32 optimizer state, was rejected: AdamW adds
lr · m/√v to each weight, and with the small learning rates of RL fine-tuning (1e-6 .. 1e-5)
that step is below half a bf16 unit (2^-8 relative) for most weights, so the update rounds
away and the policy does not move (tested: `test_bf16_masters_keep_small_updates`). Masters
cost 4 bytes/param more than bf16 params (a 0.5B model: 2 GB), which one device affords.
The engine keeps its own bf16 copy (it samples in the configured dtype) and each weight sync
rounds the masters into it; so the sync probe's tolerance follows the dtype
(`weight_sync.default_sync_tolerance`).

float16 is refused for training: it needs loss scaling, which is not implemented.
"""

from __future__ import annotations

import contextlib

import torch

from longrl.errors import ConfigError
from longrl.models import DTYPES


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` (CUDA when available, else CPU), `cpu`, `cuda` or `cuda:N` -> a torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ConfigError(f"train.device is {name!r}: use auto, cpu, cuda or cuda:N") from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device is {name!r} but torch finds no CUDA device here "
                             f"(torch {torch.__version__}); use train.device = \"auto\" or \"cpu\"")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"train.device is {name!r} but only {torch.cuda.device_count()} CUDA "
                             f"device(s) exist; use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    elif device.type != "cpu":
        raise ConfigError(f"train.device is {name!r}: use auto, cpu, cuda or cuda:N")
    return device


def compute_dtype(dtype: str) -> torch.dtype:
    """The dtype forward/backward compute in for `model.dtype`; masters stay float32."""
    if dtype == "float16":
        raise ConfigError("model.dtype = \"float16\" cannot be trained here (it needs loss scaling): "
                         "use \"bfloat16\" or \"float32\"")
    if dtype not in DTYPES:
        raise ConfigError(f"model.dtype is {dtype!r}: use one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def autocast(device: torch.device, dtype: torch.dtype):
    """A context that computes in `dtype`: autocast for bf16, nothing for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def attention_implementation(device: torch.device) -> str:
    """The attention kernel to train with: flash-attention (varlen over packed rows) when the
    package is importable on CUDA, else PyTorch SDPA. Both keep attention inside each packed
    sequence, from `position_ids` (see `logprobs.backbone_hidden`)."""
    if device.type == "cuda":
        try:
            import flash_attn  # noqa: F401
        except ImportError:
            return "sdpa"
        return "flash_attention_2"
    return "sdpa"
