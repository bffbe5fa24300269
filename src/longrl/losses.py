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

Baselines for ablations (`loss.kind`), beside OPMD and sharing its inputs:
- `grpo`: the clipped importance-ratio objective of PPO with group-normalised advantages
  a_j = (r_j − mean r) / (std r + ε) (std over the group, unbiased; `grpo_scale = false` keeps
  r_j − mean r, as Dr. GRPO does), per token −min(ρ_t a_j, clip(ρ_t, 1 − ε_low, 1 + ε_high) a_j)
  with ρ_t = π_θ/π_θi, averaged over the sequence's tokens, then over sequences (GRPO's own
  normalisation). No KL term (as TRL's default, β = 0): the ratio clip is the trust region.
- `rest`: supervised fine-tuning on the sampled responses whose reward reaches a threshold
  (ReST / rejection-sampling fine-tuning): −mean_t log π_θ(y_t) for those, 0 for the others,
  averaged over all sequences, so a batch with few correct responses takes a smaller step.
Both take the same optional token weights as OPMD (partial rollouts).

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
                    baseline: Literal["mean", "logmeanexp"] = "mean", scale: bool = False) -> tuple[torch.Tensor, dict]:
    """a_j = r_j − τ log Z: [N] rewards, [N] group index -> [N] advantages; with `scale`, divided
    by the group's reward std as GRPO does (0 for a group of equal rewards; a deviation)."""
    advantages = rewards - group_baseline(rewards, group_ids, tau, baseline)
    if scale:
        std = _group_std(rewards, group_ids)
        advantages = torch.where(std > 0, advantages / (std + 1e-4), torch.zeros_like(advantages))
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


def _per_sequence_mean(per_token: torch.Tensor, seq: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[M] token terms of sequences `seq` -> ([N] mean over each sequence's tokens, [N] has tokens)."""
    sums = torch.zeros(n, dtype=per_token.dtype, device=per_token.device).index_add_(0, seq, per_token)
    counts = torch.zeros(n, dtype=per_token.dtype, device=per_token.device).index_add_(0, seq, torch.ones_like(per_token))
    return sums / counts.clamp(min=1), counts > 0


def _group_std(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """The unbiased std of each sequence's group of rewards: [N] -> [N] (0 for a group of one)."""
    centred = rewards - group_baseline(rewards, group_ids, tau=1.0, kind="mean")
    num_groups = int(group_ids.max()) + 1 if group_ids.numel() else 0
    zeros = torch.zeros(num_groups, dtype=rewards.dtype, device=rewards.device)
    counts = zeros.index_add(0, group_ids, torch.ones_like(rewards))
    var = zeros.index_add(0, group_ids, centred**2) / (counts - 1).clamp(min=1)
    return var.sqrt()[group_ids]


def grpo_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, scale: bool = True,
                    eps: float = 1e-4) -> tuple[torch.Tensor, dict]:
    """a_j = (r_j − mean r) / (std r + eps) over each group (unbiased std; 0 for a group of one or
    of equal rewards)."""
    centred = rewards - group_baseline(rewards, group_ids, tau=1.0, kind="mean")  # [N]
    if scale:
        std = _group_std(rewards, group_ids)
        centred = torch.where(std > 0, centred / (std + eps), torch.zeros_like(centred))  # all equal: 0
    return centred, {"loss/advantage_abs_mean": centred.abs().mean().item() if len(centred) else 0.0}


def grpo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, loss_mask: torch.Tensor,
              seq_ids: torch.Tensor, advantages: torch.Tensor, clip_low: float = 0.2, clip_high: float = 0.2,
              token_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """The clipped-ratio surrogate (module docstring); inputs as `opmd_loss`."""
    mask = loss_mask.reshape(-1) > 0
    seq = seq_ids.reshape(-1)[mask]  # [M]
    log_ratio = (logprobs - old_logprobs).reshape(-1)[mask]  # [M]
    ratio = log_ratio.exp()
    adv = advantages[seq]  # [M]
    per_token = -torch.minimum(ratio * adv, ratio.clamp(1 - clip_low, 1 + clip_high) * adv)
    if token_weights is not None:
        per_token = token_weights.reshape(-1)[mask].to(per_token.dtype) * per_token
    per_seq, present = _per_sequence_mean(per_token, seq, advantages.shape[0])
    loss = per_seq[present].sum() / present.sum().clamp(min=1)
    with torch.no_grad():
        clipped = ((ratio < 1 - clip_low) & (adv < 0)) | ((ratio > 1 + clip_high) & (adv > 0))
        metrics = {
            "loss/grpo": loss.item(),
            "loss/log_ratio_abs_mean": log_ratio.abs().mean().item() if log_ratio.numel() else 0.0,
            "loss/kl_to_sampler": (ratio - 1 - log_ratio).mean().item() if log_ratio.numel() else 0.0,
            "loss/clip_fraction": clipped.float().mean().item() if log_ratio.numel() else 0.0,
        }
    return loss, metrics


def rest_weights(rewards: torch.Tensor, threshold: float) -> tuple[torch.Tensor, dict]:
    """1 for a response whose reward reaches `threshold`, else 0: [N] -> [N]."""
    kept = (rewards >= threshold).to(rewards.dtype)
    return kept, {"loss/rest_kept": kept.mean().item() if len(kept) else 0.0}


def rest_loss(logprobs: torch.Tensor, loss_mask: torch.Tensor, seq_ids: torch.Tensor, kept: torch.Tensor,
              token_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """−mean_t log π_θ(y_t) of the kept responses, averaged over all sequences (module docstring)."""
    mask = loss_mask.reshape(-1) > 0
    seq = seq_ids.reshape(-1)[mask]
    per_token = -logprobs.reshape(-1)[mask] * kept[seq]  # [M]
    if token_weights is not None:
        per_token = token_weights.reshape(-1)[mask].to(per_token.dtype) * per_token
    per_seq, present = _per_sequence_mean(per_token, seq, kept.shape[0])
    loss = per_seq[present].sum() / present.sum().clamp(min=1)
    return loss, {"loss/rest": loss.item()}


def advantages_for(config, rewards: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """The per-sequence [N] input of `loss_for` under `config.kind` (a `LossConfig`)."""
    if config.kind == "opmd":
        return opmd_advantages(rewards, group_ids, config.tau, config.baseline, config.opmd_scale)
    if config.kind == "grpo":
        return grpo_advantages(rewards, group_ids, config.grpo_scale)
    if config.kind == "rest":
        return rest_weights(rewards, config.rest_threshold)
    raise ValueError(f"unknown loss kind {config.kind!r}: use 'opmd', 'grpo' or 'rest'")


def loss_for(config, logprobs: torch.Tensor, old_logprobs: torch.Tensor, loss_mask: torch.Tensor,
             seq_ids: torch.Tensor, advantages: torch.Tensor,
             token_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """The policy loss `config.kind` selects (a `LossConfig`); inputs as `opmd_loss`."""
    if config.kind == "opmd":
        return opmd_loss(logprobs, old_logprobs, loss_mask, seq_ids, advantages, config.tau, config.level,
                         token_weights)
    if config.kind == "grpo":
        return grpo_loss(logprobs, old_logprobs, loss_mask, seq_ids, advantages, config.clip_low,
                         config.clip_high, token_weights)
    if config.kind == "rest":
        return rest_loss(logprobs, loss_mask, seq_ids, advantages, token_weights)
    raise ValueError(f"unknown loss kind {config.kind!r}: use 'opmd', 'grpo' or 'rest'")
