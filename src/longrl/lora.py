"""LoRA training (`model.lora_rank` > 0) through peft, with the engines given merged weights.

`apply_lora` injects low-rank adapters into the trainer's copy of the policy in place
(`peft.inject_adapter_in_model`: the model keeps its class and its forward, so the chunked
log-prob path and FSDP2 see the same modules) and freezes every other parameter. The engine keeps
a plain copy of the model, made before the adapters exist.

Weights leave the trainer merged: `merged_state_dict` turns a state dict with adapters
(`...q_proj.base_layer.weight`, `...q_proj.lora_A.default.weight`, `...lora_B...`) into the plain
model's (`...q_proj.weight` = W + scale · B A), so weight sync, its probe check, checkpoints and
the final model are those of an ordinary Hugging Face model, whatever the engine. The merge works
on tensors (a full state dict gathered from FSDP2 shards as well as a local one) and never
changes W in place, so no rounding accumulates over iterations.

Resume: a checkpoint's `final`-style directory holds the merged model, and its sharded state
(`Trainer.save_state`) holds the adapters and the unmerged base weights. A resumed run loads the
merged model, injects adapters, then loads that state over both, so it continues exactly where
the uninterrupted run was (tested). With `train.optimizer_reset = "all"` no state is saved, and a
resume starts fresh adapters on the merged model.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

ADAPTER = "default"  # peft's adapter name


def apply_lora(model: torch.nn.Module, rank: int, alpha: float, dropout: float, targets: list[str]) -> torch.nn.Module:
    """Inject LoRA adapters of `rank` into the modules named in `targets`, freeze the rest."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets),
                        init_lora_weights=True)  # B = 0: the adapted model starts equal to the model
    inject_adapter_in_model(config, model)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_("lora_" in name)
    model.lora_scale = alpha / rank  # peft's scaling without rsLoRA; `merged_state_dict` needs it
    return model


def with_lora(model: torch.nn.Module, config) -> torch.nn.Module:
    """`model` with adapters when the `ModelConfig` asks for them (`lora_rank` > 0), else as it is."""
    if not config.lora_rank:
        return model
    try:
        import peft  # noqa: F401
    except ImportError:
        from longrl.errors import MissingExtraError

        raise MissingExtraError("model.lora_rank > 0 needs peft: pip install 'longrl[lora]'") from None
    return apply_lora(model, config.lora_rank, config.lora_alpha, config.lora_dropout, config.lora_target_modules)


def lora_scale(model: torch.nn.Module) -> float | None:
    """The adapters' scale (alpha / rank), or None for a model without adapters."""
    return getattr(model, "lora_scale", None)


def merged_items(state: dict[str, torch.Tensor], scale: float) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of the plain model from a state dict with adapters (module docstring), one
    merged tensor at a time, so a weight sync holds one extra tensor rather than a second model;
    tensors of modules without adapters pass through as they are."""
    for name, tensor in state.items():
        if ".lora_A." in name or ".lora_B." in name:
            continue
        if ".base_layer." not in name:
            yield name, tensor
            continue
        prefix, _, leaf = name.partition(".base_layer.")
        if leaf == "weight":
            a = state[f"{prefix}.lora_A.{ADAPTER}.weight"]  # [r, in]
            b = state[f"{prefix}.lora_B.{ADAPTER}.weight"]  # [out, r]
            tensor = tensor + scale * (b.to(tensor.dtype) @ a.to(tensor.dtype))
        yield f"{prefix}.{leaf}", tensor


def merged_state_dict(state: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """The plain model's state dict from one with adapters (`merged_items`, all at once)."""
    return dict(merged_items(state, scale))
