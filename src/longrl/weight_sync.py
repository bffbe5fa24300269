"""Trainer -> engine weight sync after every training phase (SPEC §8, hybrid deployment).

The engine holds its own copy of the weights; after each training phase the trainer's current
parameters are pushed into it, so the next rollout samples from π_θ(i+1).

A push can fail silently: a name the engine does not map, a tied output layer left stale, a
cache of the old weights reused. Sampling would then go on from the old policy while the
trainer's OPMD log-ratios (SPEC §3) assume the new one. So `WeightSync` checks every push: the
engine scores a fixed probe sequence, and its per-token log-probs must equal the trainer's own
(`longrl.models.token_logprobs`, temperature 1) within `tolerance`, or `WeightSyncError` is raised.
Both sides in float32 agree to ~1e-6 here; one optimizer step moves them by ~1e-2 or more.

The tolerance follows the engine's dtype (`default_sync_tolerance`). With `model.dtype =
"bfloat16"` the trainer keeps float32 master weights (`device.py`) and the engine a bf16 copy, so
the two sides differ by bf16 rounding even after a perfect push: 4e-3 nats on the tiny random
model, and more on a trained model whose distributions are sharper (a bf16 logit of 20 is off by
up to 0.06). A float32 tolerance would then fail every sync. The bf16 default, 0.25 nats, still
catches a lost push once the policy has moved by more than that on some probe token, and a push
that garbles a tensor at once; it cannot see a single small step (float32 engines can).

A vision-language policy (`longrl.vision`) is probed with an image in its prompt (a fixed test
card), so the answer tokens' log-probs depend on the vision tower too: a push that leaves the
engine's vision tower stale fails the check like one that leaves its decoder stale.
"""

from __future__ import annotations

import math
import time

import torch

from longrl.lora import lora_scale, merged_items
from longrl.models import encode_prompt, token_logprobs
from longrl.types import Prompt
from longrl.vision import encode_vision_prompt, is_vision_model, probe_image, vision_logprobs

PROBE_QUESTION = "Probe: what is 12+34? Show the steps."
PROBE_ANSWER = " 12+34: 2+4=6, 1+3=4, so the answer is 46. The quick brown fox jumps over the lazy dog."


CONFIG_DEFAULT_TOLERANCE = 1e-3  # rollout.sync_check_tolerance's default: "follow the dtype"
SYNC_TOLERANCE = {"float32": 1e-3, "float16": 5e-2, "bfloat16": 0.25}  # nats; module docstring


def default_sync_tolerance(dtype: str | torch.dtype) -> float:
    """The probe tolerance for an engine that holds its weights in `dtype`."""
    name = str(dtype).removeprefix("torch.")
    if name not in SYNC_TOLERANCE:
        raise ValueError(f"no weight-sync tolerance for dtype {name!r}: use one of {sorted(SYNC_TOLERANCE)}")
    return SYNC_TOLERANCE[name]


def sync_tolerance(configured: float, dtype: str | torch.dtype) -> float:
    """`rollout.sync_check_tolerance` as given, or the dtype's default when it was left at the
    config default (an explicit 1e-3 cannot be told apart from the default; it gets the dtype's)."""
    return default_sync_tolerance(dtype) if configured == CONFIG_DEFAULT_TOLERANCE else configured


class WeightSyncError(RuntimeError):
    """The engine is not sampling from the trainer's current weights."""


def sync_weights(model: torch.nn.Module, engine) -> dict[str, float]:
    """Push the trainer's parameters into the engine (no check); `perf/weight_sync_s`."""
    start = time.perf_counter()
    with torch.no_grad():
        scale = lora_scale(model)
        if scale is None:
            engine.load_weights((name, p.detach()) for name, p in model.named_parameters())
        else:  # adapters merged: the engine holds a plain model (lora.py)
            engine.load_weights(merged_items({n: p.detach() for n, p in model.named_parameters()}, scale))
    return {"perf/weight_sync_s": time.perf_counter() - start}


def probe_sequence(tokenizer, max_len: int | None = None) -> tuple[list[int], int]:
    """(token ids, prompt length) of the fixed probe: a chat prompt and a written answer."""
    prompt = encode_prompt(tokenizer, PROBE_QUESTION)
    answer = tokenizer(PROBE_ANSWER, add_special_tokens=False).input_ids
    ids = prompt + answer
    if max_len is not None:
        ids = ids[:max_len]
    if len(ids) <= len(prompt):
        raise ValueError(f"the weight-sync probe has no answer tokens within {max_len} positions")
    return ids, len(prompt)


def vision_probe_sequence(processor, max_len: int | None = None) -> tuple[list[int], int, dict[str, torch.Tensor]]:
    """(token ids, prompt length, image inputs) of the probe for a vision-language policy: the
    probe question about a fixed test card (`vision.probe_image`), and the written answer."""
    prompt, mm = encode_vision_prompt(processor, Prompt("weight-sync-probe", PROBE_QUESTION, images=[probe_image()]))
    answer = processor.tokenizer(PROBE_ANSWER, add_special_tokens=False).input_ids
    ids = (prompt + answer)[:max_len]
    if len(ids) <= len(prompt):
        raise ValueError(f"the weight-sync probe has no answer tokens within {max_len} positions")
    return ids, len(prompt), mm


class WeightSync:
    """Push the trainer's weights into the engine, then prove the engine holds them.

    `tolerance` in nats on any probe token (`rollout.sync_check_tolerance`); 0 skips the check.
    A vision-language `model` needs its `processor` (`vision.load_processor`): its probe holds an
    image (module docstring).
    """

    def __init__(self, model: torch.nn.Module, engine, tokenizer, tolerance: float = 1e-3, processor=None):
        self.model, self.engine, self.tolerance = model, engine, tolerance
        max_len = getattr(model.config.get_text_config(decoder=True), "max_position_embeddings", None)
        self.probe_mm = None
        if is_vision_model(model):
            if processor is None:
                raise ValueError(f"{type(model).__name__} is a vision-language model: give WeightSync its processor "
                                 "(longrl.vision.load_processor(model_dir)) so the probe covers the vision tower")
            self.probe_ids, self.prompt_len, self.probe_mm = vision_probe_sequence(processor, max_len)
        else:
            self.probe_ids, self.prompt_len = probe_sequence(tokenizer, max_len)

    def __call__(self, iteration: int) -> dict[str, float]:
        metrics = sync_weights(self.model, self.engine)
        if self.tolerance > 0:
            start = time.perf_counter()
            diff = self.probe_max_diff()
            metrics |= {"sync/probe_max_diff": diff, "perf/sync_check_s": time.perf_counter() - start}
            if not diff <= self.tolerance:  # NaN fails too
                raise WeightSyncError(
                    f"engine log-probs differ from the trainer's by {diff:.3g} > tol "
                    f"{self.tolerance:g} after sync at iteration {iteration}: weights were not "
                    f"reloaded (engine {type(self.engine).__name__}; see rollout.sync_check_tolerance)")
        return metrics

    def probe_max_diff(self) -> float:
        """max over probe tokens of |engine log-prob - trainer log-prob|, at temperature 1."""
        n = self.prompt_len
        if self.probe_mm is None:
            engine_lp = torch.tensor(self.engine.score([self.probe_ids], [n], 1.0)[0])
        else:
            engine_lp = torch.tensor(self.engine.score([self.probe_ids], [n], 1.0, mm=[self.probe_mm])[0])
        device = next(self.model.parameters()).device
        ids = torch.tensor([self.probe_ids], device=device)  # [1, T]
        positions = torch.arange(ids.shape[1], device=device)[None]  # [1, T]
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            if self.probe_mm is None:
                trainer_lp = token_logprobs(self.model, ids, positions, 1.0)[0, n:].cpu()
            else:
                trainer_lp = vision_logprobs(self.model, ids, [self.probe_mm], prompt_lens=[n])[0][0, n:].cpu()
        self.model.train(was_training)
        if engine_lp.shape != trainer_lp.shape:
            return math.inf
        return float((engine_lp - trainer_lp).abs().max())


def probe_diff(engine_logprobs, trainer_logprobs) -> float:
    """max |engine - trainer| over the probe tokens; inf when their lengths differ."""
    engine_lp, trainer_lp = torch.tensor(list(engine_logprobs)), torch.tensor(list(trainer_logprobs))
    if engine_lp.shape != trainer_lp.shape:
        return math.inf
    return float((engine_lp - trainer_lp).abs().max())


def check_engines(trainer_logprobs, engine_logprobs: dict[str, list[float]], tolerance: float,
                  iteration: int) -> dict[str, float]:
    """The sync probe on several engines (a cluster's rollout workers), each named by its key.

    `trainer_logprobs` are the trainer's temperature-1 log-probs of the probe's answer tokens,
    `engine_logprobs[name]` each engine's. Every engine must agree within `tolerance`; otherwise
    `WeightSyncError` names each engine that does not. Returns `sync/probe_max_diff` (over all
    engines) and `sync/engines_checked`.
    """
    diffs = {name: probe_diff(lp, trainer_logprobs) for name, lp in engine_logprobs.items()}
    failed = {name: d for name, d in diffs.items() if not d <= tolerance}  # NaN fails too
    if failed:
        listed = ", ".join(f"{name} (by {d:.3g})" for name, d in failed.items())
        raise WeightSyncError(
            f"after sync at iteration {iteration}, {len(failed)} of {len(diffs)} engines differ from the "
            f"trainer's log-probs by more than tol {tolerance:g}: {listed}; their weights were not "
            "reloaded (see rollout.sync_check_tolerance)")
    return {"sync/probe_max_diff": max(diffs.values(), default=0.0), "sync/engines_checked": float(len(diffs))}
