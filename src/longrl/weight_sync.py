"""Trainer -> engine weight sync after every training phase (SPEC §8, hybrid deployment).

The engine holds its own copy of the weights; after each training phase the trainer's current
parameters are pushed into it, so the next rollout samples from π_θ(i+1).
"""

from __future__ import annotations

import time

import torch


def sync_weights(model: torch.nn.Module, engine) -> dict[str, float]:
    start = time.perf_counter()
    with torch.no_grad():
        engine.load_weights((name, p.detach()) for name, p in model.named_parameters())
    return {"perf/weight_sync_s": time.perf_counter() - start}
