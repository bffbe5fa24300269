"""Online policy mirror descent, the k1.5 policy loss (SPEC §3, paper §2.3.2), as pure functions.

Iteration i samples k responses per prompt from π_θi and minimises, per prompt,

    L(θ) = 1/k Σ_j ( r_j − τ log Z − τ log(π_θ(y_j|x) / π_θi(y_j|x)) )²            (SPEC §3)

with τ log Z estimated by the group's mean reward r̄ (paper) or by τ log mean_j exp(r_j / τ).
The advantage a_j = r_j − τ log Z is fixed for the iteration; only the log-ratio moves.

Deviations, all deliberate:
- The squared error is divided by 2τ. This only rescales the objective, and makes its gradient
  exactly the paper's, −[ a_j ∇log π_θ(y_j|x) − τ ρ_j ∇ρ_j ] with ρ_j the log-ratio, so the step
  size does not change with τ.
- `level="token"` (ours): the same expression per response token with the token's log-ratio,
  averaged over the sequence's tokens; the sequence log-ratio, a sum over possibly thousands of
  tokens, makes the squared term of `level="sequence"` large for long responses.
- Sequences are averaged with equal weight over the whole batch (the mean over prompts of the
  mean over their k samples when every prompt has k samples, as here).
- Optional per-token weights w_t (partial rollouts, truncated importance weights for tokens an
  older policy sampled, `rollout/partial.py`): `level="token"` weights each token's squared
  error, w_t (a_j − τ ρ_t)² / 2τ, still averaged over the sequence's loss tokens (not over Σ w);
  `level="sequence"` uses the weighted log-ratio ρ_j = Σ_t w_t ρ_t. w ≡ 1 is the plain loss.

Shape legend: B packed rows, T tokens per row, N sequences.
"""

from __future__ import annotations

from typing import Literal

import torch


def group_baseline(rewards: torch.Tensor, group_ids: torch.Tensor, tau: float,
                   kind: Literal["mean", "logmeanexp"] = "mean") -> torch.Tensor:
    """The estimate of τ log Z for each sequence's group of samples: [N] -> [N]."""
    num_groups = int(group_ids.max()) + 1 if group_ids.numel() else 0
    counts = torch.zeros(num_groups, dtype=rewards.dtype, device=rewards.device).index_add_(0, group_ids, torch.ones_like(rewards))
    if kind == "mean":
        sums = torch.zeros(num_groups, dtype=rewards.dtype, device=rewards.device).index_add_(0, group_ids, rewards)
        return (sums / counts)[group_ids]
    if kind == "logmeanexp":
        scaled = rewards / tau  # [N]
        peak = torch.full((num_groups,), -torch.inf, dtype=rewards.dtype, device=rewards.device).scatter_reduce(
            0, group_ids, scaled, reduce="amax")  # [G], subtracted for numerical stability
        sums = torch.zeros(num_groups, dtype=rewards.dtype, device=rewards.device).index_add_(0, group_ids, (scaled - peak[group_ids]).exp())
        return (tau * (peak + (sums / counts).log()))[group_ids]
    raise ValueError(f"unknown baseline {kind!r}: use 'mean' or 'logmeanexp'")


def opmd_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, tau: float,
                    baseline: Literal["mean", "logmeanexp"] = "mean") -> tuple[torch.Tensor, dict]:
    """a_j = r_j − τ log Z: [N] rewards, [N] group index -> [N] advantages."""
    advantages = rewards - group_baseline(rewards, group_ids, tau, baseline)
    metrics = {"loss/advantage_abs_mean": advantages.abs().mean().item() if len(advantages) else 0.0}
    return advantages, metrics


def opmd_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, loss_mask: torch.Tensor,
              seq_ids: torch.Tensor, advantages: torch.Tensor, tau: float,
              level: Literal["sequence", "token"] = "token",
              token_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """The OPMD surrogate over a packed batch.

    logprobs, old_logprobs: [B, T] log-prob of each target token under π_θ and π_θi.
    loss_mask: [B, T] 1 where the token enters the loss. seq_ids: [B, T] the token's sequence.
    advantages: [N] a_j. token_weights: optional [B, T] w_t (module docstring).
    Returns (scalar loss, metrics).
    """
    mask = loss_mask.reshape(-1) > 0  # [B*T]
    seq = seq_ids.reshape(-1)[mask]  # [M] sequence of each loss token
    log_ratio = (logprobs - old_logprobs).reshape(-1)[mask]  # [M]
    weight = None if token_weights is None else token_weights.reshape(-1)[mask].to(log_ratio.dtype)  # [M]
    n = advantages.shape[0]
    tokens_per_seq = torch.zeros(n, dtype=log_ratio.dtype, device=log_ratio.device).index_add_(0, seq, torch.ones_like(log_ratio))
    present = tokens_per_seq > 0  # [N] sequences with at least one loss token
    if level == "sequence":
        weighted = log_ratio if weight is None else weight * log_ratio  # [M]
        seq_ratio = torch.zeros(n, dtype=log_ratio.dtype, device=log_ratio.device).index_add_(0, seq, weighted)  # [N]
        per_seq = (advantages - tau * seq_ratio) ** 2 / (2 * tau)  # [N]
    elif level == "token":
        per_token = (advantages[seq] - tau * log_ratio) ** 2 / (2 * tau)  # [M]
        if weight is not None:
            per_token = weight * per_token
        per_seq = torch.zeros(n, dtype=log_ratio.dtype, device=log_ratio.device).index_add_(0, seq, per_token)
        per_seq = per_seq / tokens_per_seq.clamp(min=1)  # [N]
    else:
        raise ValueError(f"unknown loss level {level!r}: use 'sequence' or 'token'")
    loss = per_seq[present].sum() / present.sum().clamp(min=1)
    with torch.no_grad():
        metrics = {
            "loss/opmd": loss.item(),
            "loss/log_ratio_abs_mean": log_ratio.abs().mean().item() if log_ratio.numel() else 0.0,
            # k3 estimate of KL(π_θi || π_θ) per token, from samples of π_θi
            "loss/kl_to_sampler": (log_ratio.exp() - 1 - log_ratio).mean().item() if log_ratio.numel() else 0.0,
        }
    return loss, metrics
