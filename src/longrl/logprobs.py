"""Per-token log-probs through the LM head in chunks of tokens: memory grows with tokens, not
tokens × vocabulary (SPEC §8, one-device training).

The plain computation, `model(ids).logits.float().log_softmax(-1)`, holds [B, T, V] float32
logits, their softmax and their gradient: at T = 32k and V = 152k that is 20 GB per tensor,
far more than the model. Here the backbone returns hidden states [N, H] (N = B·T tokens), and
`chunked_logprobs` walks them `chunk_tokens` at a time: logits of one chunk [n, V] are made,
reduced to (log-prob of the target, log-sum-exp) and dropped. Its backward recomputes each
chunk's logits from the saved hidden states and lm_head weight and forms the gradient
d logp_t / d z = (onehot(y_t) − softmax(z_t)) / T chunk by chunk, so no [N, V] tensor exists
in forward or backward; the extra cost is one more [n, H] × [H, V] matmul per chunk.

Why hand-written: the fused linear-cross-entropy kernels that exist (liger-kernel and the like)
return a loss, not the per-token log-probs and their gradient that the OPMD loss needs, and they
run on GPU only; this path is portable (CPU and GPU alike) and is checked against the plain
computation in float32 to 1e-5, values and gradients (`tests/unit/test_logprobs.py`).

Precision: the matmuls run in the autocast dtype when autocast is on (bf16 training, see
`device.py`), else in the weight's dtype; softmax, log-sum-exp and the gradient accumulators are
float32. The entropy H_t = −Σ_v p_tv log p_tv is exact per token and carries no gradient (a
metric).

Shape legend: B rows, T tokens per row, N = B·T tokens, n tokens in a chunk, H hidden size,
V vocabulary.
"""

from __future__ import annotations

import torch


def _chunk_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  temperature: float) -> torch.Tensor:
    """z = (h Wᵀ + b) / T in float32: [n, H], [V, H] (already in the compute dtype) -> [n, V]."""
    logits = (hidden.to(weight.dtype) @ weight.T).float()  # [n, V]
    if bias is not None:
        logits += bias.float()
    return logits.div_(temperature)


def _forward_chunks(hidden, weight, bias, targets, temperature, chunk, dtype, with_entropy):
    """(log p(target) [N], log-sum-exp [N], entropy [N] or None), one chunk of logits at a time."""
    N, w = hidden.shape[0], weight.to(dtype)
    logp = torch.empty(N, dtype=torch.float32, device=hidden.device)
    lse = torch.empty_like(logp)
    entropy = torch.empty_like(logp) if with_entropy else None
    for s in range(0, N, chunk):
        z = _chunk_logits(hidden[s:s + chunk], w, bias, temperature)  # [n, V]
        lse[s:s + chunk] = z.logsumexp(-1)
        logp[s:s + chunk] = z.gather(-1, targets[s:s + chunk, None]).squeeze(-1) - lse[s:s + chunk]
        if with_entropy:
            log_p = z.sub_(lse[s:s + chunk, None])  # [n, V], in place: z is not needed again
            entropy[s:s + chunk] = -(log_p.exp() * log_p).sum(-1)
    return logp, lse, entropy


class _ChunkedLinearLogProbs(torch.autograd.Function):
    """log softmax((h Wᵀ + b) / T)[y] per token, with a backward that recomputes logits by chunk."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, chunk, dtype, with_entropy):
        with torch.autocast(hidden.device.type, enabled=False):  # `dtype` decides, not autocast
            logp, lse, entropy = _forward_chunks(hidden, weight, bias, targets, temperature, chunk,
                                                 dtype, with_entropy)
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.temperature, ctx.chunk, ctx.dtype = temperature, chunk, dtype
        if entropy is None:
            return logp, logp.new_zeros(0)
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, _grad_entropy):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        w = weight.to(ctx.dtype)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if need_b else None
        with torch.autocast(hidden.device.type, enabled=False):
            for s in range(0, hidden.shape[0], ctx.chunk):
                h, g = hidden[s:s + ctx.chunk], grad_logp[s:s + ctx.chunk, None].float()  # [n, H], [n, 1]
                z = _chunk_logits(h, w, bias, ctx.temperature)  # [n, V]
                dz = z.sub_(lse[s:s + ctx.chunk, None]).exp_().mul_(-g)  # -g·softmax, in place
                dz.scatter_add_(1, targets[s:s + ctx.chunk, None], g).div_(ctx.temperature)  # d/d logits
                if need_h:
                    grad_h[s:s + ctx.chunk] = (dz.to(ctx.dtype) @ w).to(hidden.dtype)  # [n, H]
                if need_w and ctx.dtype == torch.float32:
                    grad_w.addmm_(dz.T, h.float())  # [V, H], accumulated in place: no [V, H] temporary
                elif need_w:
                    grad_w += (dz.to(ctx.dtype).T @ h.to(ctx.dtype)).float()  # [V, H]
                if need_b:
                    grad_b += dz.sum(0)
        grad_w = None if grad_w is None else grad_w.to(weight.dtype)
        grad_b = None if grad_b is None else grad_b.to(bias.dtype)
        return grad_h, grad_w, grad_b, None, None, None, None, None


def chunked_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                     temperature: float = 1.0, chunk_tokens: int = 1024, bias: torch.Tensor | None = None,
                     with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log softmax((hidden @ weightᵀ + bias) / temperature)[targets], chunk by chunk.

    hidden [N, H], weight [V, H] (the lm_head's), targets [N] -> (log-probs [N] float32,
    entropies [N] float32 or None). Differentiable w.r.t. hidden, weight and bias.
    """
    if chunk_tokens <= 0:
        raise ValueError(f"chunk_tokens is {chunk_tokens}: give a positive number of tokens per chunk")
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
    temperature = max(temperature, 1e-6)
    needs_grad = torch.is_grad_enabled() and any(
        x is not None and x.requires_grad for x in (hidden, weight, bias))
    if not needs_grad:  # nothing to save for a backward
        with torch.autocast(device, enabled=False):
            logp, _, entropy = _forward_chunks(hidden, weight, bias, targets, temperature, chunk_tokens,
                                               dtype, with_entropy)
        return logp, entropy
    logp, entropy = _ChunkedLinearLogProbs.apply(hidden, weight, bias, targets, temperature,
                                                 chunk_tokens, dtype, with_entropy)
    return logp, entropy if with_entropy else None


_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def supports_chunked(model) -> bool:
    """True when logits are exactly `lm_head(backbone(ids))`: a linear head on a separate
    decoder, and no logit soft-capping or scaling in the config (those models take the plain
    path)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, torch.nn.Linear) or not hasattr(model, "get_decoder"):
        return False
    config = model.config.get_text_config(decoder=True)
    if any(getattr(config, key, None) for key in _LOGIT_TRANSFORMS):
        return False
    return model.get_decoder() is not model


def text_positions(model, position_ids: torch.Tensor) -> torch.Tensor:
    """`position_ids` [B, T] as the model takes them: as they are, or, for a model with 3-D rotary
    positions (Qwen2-VL's M-RoPE, `longrl.vision`), [4, B, T]: the text index, which transformers
    reads packed sequences from, then the same index on the three M-RoPE axes (text tokens have
    no image before them to shift them). Given [B, T] such a model would see no packing."""
    rope = getattr(model.config.get_text_config(decoder=True), "rope_parameters", None) or {}
    if position_ids.ndim == 2 and "mrope_section" in rope:
        return position_ids[None].expand(4, -1, -1)  # [4, B, T]
    return position_ids


def backbone_hidden(model, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """Final hidden states [B, T, H] of the decoder for packed rows [B, T].

    With no attention mask, transformers keeps attention inside each packed sequence from the
    restarting `position_ids`: eager, SDPA and flex build a block-diagonal causal mask from them
    (`masking_utils.find_packed_sequence_indices`); flash-attention takes its varlen path from
    them, but only for a single row, so for it the rows are laid end to end in one row first
    (each row starts at position 0, so the sequences stay apart).
    """
    B, T = input_ids.shape
    if B > 1 and model.config._attn_implementation.startswith("flash"):
        input_ids, position_ids = input_ids.reshape(1, B * T), position_ids.reshape(1, B * T)
    out = model.get_decoder()(input_ids=input_ids, position_ids=text_positions(model, position_ids),
                              use_cache=False)
    return out.last_hidden_state.reshape(B, T, -1)  # [B, T, H]


def policy_logprobs(model, input_ids: torch.Tensor, position_ids: torch.Tensor, temperature: float = 1.0,
                    chunk_tokens: int = 1024, with_entropy: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log p(input_ids[:, t] | input_ids[:, <t]) [B, T], entropy of that distribution [B, T] or
    None), both 0 at t = 0, computed through the LM head in chunks of `chunk_tokens`."""
    B, T = input_ids.shape
    hidden = backbone_hidden(model, input_ids, position_ids)[:, :-1]  # [B, T-1, H]
    head = model.get_output_embeddings()
    logp, entropy = chunked_logprobs(hidden.reshape(B * (T - 1), -1), head.weight,
                                     input_ids[:, 1:].reshape(-1), temperature, chunk_tokens,
                                     head.bias, with_entropy)  # [B*(T-1)] each
    pad = lambda x: torch.nn.functional.pad(x.reshape(B, T - 1), (1, 0))  # noqa: E731  [B, T]
    return pad(logp), None if entropy is None else pad(entropy)
