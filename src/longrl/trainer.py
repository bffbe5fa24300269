"""The training phase of an RL iteration: packing, mini-batches, and the OPMD step (SPEC §3).

Per iteration, over the scored trajectories of the rollout phase:
1. advantages a_j = r_j − τ log Z are computed once per group of k samples (`losses.py`);
2. the optimizer is reset (the reference policy π_θi just changed, SPEC §3);
3. for `epochs` passes, the sequences are shuffled and split into mini-batches of
   `mini_batch_size`; each mini-batch is packed into rows of `row_tokens` tokens and takes one
   optimizer step. Rows are processed in micro-batches (gradient accumulation) to bound memory:
   `max_tokens_per_micro_batch` groups consecutive rows so that rows x longest row stays within
   the budget, each micro-batch cut to its longest row (`micro_batches`); `micro_batch_rows`
   caps the rows per micro-batch.

Device and precision (`device.py`): the policy, each micro-batch and the loss live on the
trainer's device; the weights are float32 masters and forward/backward run under autocast in
the compute dtype (bf16 for `model.dtype = "bfloat16"`). Log-probs go through the LM head in
chunks of `logprob_chunk_tokens` (`logprobs.py`), and with `gradient_checkpointing` each
decoder layer recomputes its activations in backward.

π_θi log-probs are those the engine recorded while sampling; with `recompute_old_logprobs` the
trainer recomputes them before the first step. Either way the largest gap between the engine's
and the trainer's numbers is logged as `train/old_logprob_max_diff` (SPEC §3 asks to record it).

Shape legend: B packed rows, T tokens per row, N sequences.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from longrl.config import LossConfig, TrainConfig
from longrl.device import attention_implementation, autocast, compute_dtype
from longrl.logprobs import policy_logprobs, supports_chunked
from longrl.losses import opmd_advantages, opmd_loss
from longrl.models import token_logprobs
from longrl.types import TrainBatch, Trajectory


@dataclass
class PackedRows:
    """Sequences laid end to end in rows; see `pack`."""

    input_ids: torch.Tensor  # [B, T]
    position_ids: torch.Tensor  # [B, T]
    values: list[torch.Tensor]  # each [B, T]: per-token values packed alongside the ids
    seq_ids: torch.Tensor  # [B, T] index of the sequence, -1 on padding


def pack(sequences: Sequence[list[int]], per_token: Sequence[Sequence[list[float]]], row_tokens: int,
         pad_id: int) -> PackedRows:
    """Pack sequences into rows of at most max(row_tokens, longest) tokens, in order (greedy).

    `per_token[k][j]` is the k-th per-token value list of sequence j, packed in the same places.
    Padding gets its own restarting positions so it never attends to a real sequence.
    """
    limit = max(row_tokens, max(len(s) for s in sequences))
    rows: list[list[int]] = [[]]
    for j, seq in enumerate(sequences):
        if rows[-1] and sum(len(sequences[i]) for i in rows[-1]) + len(seq) > limit:
            rows.append([])
        rows[-1].append(j)
    T = max(sum(len(sequences[i]) for i in row) for row in rows)
    B = len(rows)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    position_ids = torch.zeros((B, T), dtype=torch.long)
    seq_ids = torch.full((B, T), -1, dtype=torch.long)
    values = [torch.zeros((B, T)) for _ in per_token]
    for b, row in enumerate(rows):
        at = 0
        for j in row:
            n = len(sequences[j])
            input_ids[b, at:at + n] = torch.tensor(sequences[j])
            position_ids[b, at:at + n] = torch.arange(n)
            seq_ids[b, at:at + n] = j
            for value, source in zip(values, per_token):
                value[b, at:at + n] = torch.tensor(source[j], dtype=torch.float32)
            at += n
        position_ids[b, at:] = torch.arange(T - at)
    return PackedRows(input_ids, position_ids, values, seq_ids)


def build_train_batch(trajectories: Sequence[Trajectory], advantages: torch.Tensor,
                      row_tokens: int, pad_id: int,
                      response_weights: Sequence[list[float]] | None = None) -> TrainBatch:
    """Pack prompt + response of each trajectory; only response tokens enter the loss.

    `response_weights[j]`, optional, is a loss weight per response token of trajectory j; a
    weight of 0 puts the token outside the loss mask (partial rollouts, `rollout/partial.py`).
    """
    sequences, masks, old, weights = [], [], [], []
    for j, t in enumerate(trajectories):
        n_prompt, response = len(t.prompt_ids), t.response_ids
        sequences.append(t.prompt_ids + response)
        w = [1.0] * len(response) if response_weights is None else list(response_weights[j])
        masks.append([0.0] * n_prompt + [float(x > 0) for x in w])
        old.append([0.0] * n_prompt + t.response_logprobs)
        weights.append([0.0] * n_prompt + w)
    per_token = [masks, old] if response_weights is None else [masks, old, weights]
    rows = pack(sequences, per_token, row_tokens, pad_id)
    loss_mask, old_logprobs = rows.values[:2]
    seq_ids = torch.where(loss_mask > 0, rows.seq_ids, -1)
    rewards = torch.tensor([float(t.reward) for t in trajectories])
    token_weights = rows.values[2] if response_weights is not None else None
    return TrainBatch(rows.input_ids, rows.position_ids, loss_mask, old_logprobs, seq_ids,
                      advantages, rewards, len(trajectories), token_weights)


def micro_batches(row_lengths: Sequence[int], max_tokens: int = 0, max_rows: int = 0) -> list[range]:
    """Consecutive rows grouped for one forward/backward each.

    A group's padded size is its rows x its longest row; it stays within `max_tokens` (0 = no
    limit) with at most `max_rows` rows (0 = no limit). A row longer than `max_tokens` goes
    alone: a sequence is never split.
    """
    groups: list[range] = []
    longest = 0
    for i, n in enumerate(row_lengths):
        if groups:
            size = len(groups[-1]) + 1
            if (not max_tokens or size * max(longest, n) <= max_tokens) and (not max_rows or size <= max_rows):
                groups[-1], longest = range(groups[-1].start, i + 1), max(longest, n)
                continue
        groups.append(range(i, i + 1))
        longest = n
    return groups


def row_lengths(used: torch.Tensor) -> list[int]:
    """[B, T] bool, True where a row holds a token that matters -> the length of each row up to
    its last such token (at least 1). Later columns can be cut: attention is causal."""
    T = used.shape[1]
    last = T - used.flip(-1).int().argmax(-1)  # [B]; T - 0 = T when no token matters
    return [int(n) if bool(u.any()) else 1 for n, u in zip(last, used)]


def _count_sequences(seq_ids: torch.Tensor, loss_mask: torch.Tensor) -> int:
    """Sequences with at least one loss token."""
    return int(seq_ids[loss_mask > 0].unique().numel())


def group_indices(trajectories: Sequence[Trajectory]) -> torch.Tensor:
    """[N] index of each trajectory's prompt group."""
    index: dict[str, int] = {}
    return torch.tensor([index.setdefault(t.group_key, len(index)) for t in trajectories])


class Trainer:
    """Owns the policy and runs the training phase of each iteration."""

    def __init__(self, model, train: TrainConfig, loss: LossConfig, pad_id: int,
                 temperature: float = 1.0, seed: int = 0, device: torch.device | str | None = None,
                 dtype: str = "float32"):
        """`device`: where to train (None: where the model is); `dtype`: `model.dtype`, the compute
        precision. The model is moved there and its weights become float32 masters (device.py)."""
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.compute_dtype = compute_dtype(dtype)
        self.model = model.to(self.device, dtype=torch.float32)
        self.config, self.loss_config = train, loss
        self.pad_id, self.temperature = pad_id, temperature
        self.rng = random.Random(seed)
        attention = attention_implementation(self.device)
        if attention != self.model.config._attn_implementation and attention.startswith("flash"):
            self.model.set_attn_implementation(attention)  # varlen over packed rows (logprobs.py)
        if train.gradient_checkpointing:
            # non-reentrant: works when the inputs (token ids) need no gradient
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.optimizer = self._new_optimizer()

    def _new_optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        return torch.optim.AdamW(self.model.parameters(), lr=c.lr, betas=tuple(c.betas),
                                 weight_decay=c.weight_decay, fused=self.device.type == "cuda")

    def _micro_batches(self, used: torch.Tensor) -> list[tuple[slice, int]]:
        """(rows, width) of each micro-batch of packed rows; `used` [B, T] marks tokens that matter."""
        lengths = row_lengths(used)
        groups = micro_batches(lengths, self.config.max_tokens_per_micro_batch, self.config.micro_batch_rows)
        return [(slice(g.start, g.stop), max(lengths[g.start:g.stop])) for g in groups]

    def _logprobs(self, input_ids: torch.Tensor, position_ids: torch.Tensor,
                  with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-token log-probs [b, T] (and entropies [b, T] when asked and chunking applies)."""
        chunk = self.config.logprob_chunk_tokens
        with autocast(self.device, self.compute_dtype):
            if with_entropy and chunk > 0 and supports_chunked(self.model):
                return policy_logprobs(self.model, input_ids, position_ids, self.temperature, chunk, True)
            return token_logprobs(self.model, input_ids, position_ids, self.temperature, chunk), None

    def step(self, batch: TrainBatch) -> dict[str, float]:
        """One optimizer step on a packed mini-batch (gradient accumulation over row chunks)."""
        self.model.train()
        total = max(_count_sequences(batch.seq_ids, batch.loss_mask), 1)
        metrics: dict[str, float] = {}
        first_gap, entropy_sum, entropy_count = 0.0, 0.0, 0.0
        advantages = batch.advantages.to(self.device)
        for rows, width in self._micro_batches(batch.loss_mask > 0):
            on = lambda x: None if x is None else x[rows, :width].to(self.device)  # noqa: E731  [b, t]
            ids, old, mask, seq_ids, weights = map(on, (batch.input_ids, batch.old_logprobs, batch.loss_mask,
                                                         batch.seq_ids, batch.token_weights))
            logp, entropy = self._logprobs(ids, on(batch.position_ids), with_entropy=True)  # [b, t] each
            part = _count_sequences(seq_ids, mask)
            loss, m = opmd_loss(logp, old, mask, seq_ids.clamp(min=0), advantages, self.loss_config.tau,
                                self.loss_config.level, weights)
            (loss * part / total).backward()
            with torch.no_grad():
                gap = ((logp - old).abs() * mask).max().item() if mask.any() else 0.0
                if entropy is not None:
                    entropy_sum += float((entropy * mask).sum())
                    entropy_count += float(mask.sum())
            first_gap = max(first_gap, gap)
            for key, value in m.items():
                metrics[key] = metrics.get(key, 0.0) + value * part / total
        if entropy_count:
            metrics["train/entropy"] = entropy_sum / entropy_count  # nats per loss token, at the sampling T
        if self.config.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
            metrics["train/grad_norm"] = float(norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        metrics["train/logprob_gap_max"] = first_gap
        return metrics

    @torch.no_grad()
    def current_logprobs(self, trajectories: Sequence[Trajectory]) -> list[torch.Tensor]:
        """The current policy's log-prob of each response token, one [n_response] tensor each.

        The sequences are packed into rows of `row_tokens` as for training and scored in the same
        micro-batches (one forward per sequence cost ~6x more on the small models measured in
        docs/rollout.md).
        """
        if not trajectories:
            return []
        self.model.eval()
        sequences = [t.prompt_ids + t.response_ids for t in trajectories]
        rows = pack(sequences, [], self.config.row_tokens, self.pad_id)
        out: list[torch.Tensor | None] = [None] * len(trajectories)
        for chunk, width in self._micro_batches(rows.seq_ids >= 0):
            logp = self._logprobs(rows.input_ids[chunk, :width].to(self.device),
                                  rows.position_ids[chunk, :width].to(self.device))[0].float().cpu()  # [b, t]
            for seq_row, seq_logp in zip(rows.seq_ids[chunk, :width], logp):
                for j in seq_row[seq_row >= 0].unique().tolist():
                    at = (seq_row == j).nonzero()  # this sequence's columns, contiguous
                    first = int(at[0]) + len(trajectories[j].prompt_ids)
                    out[j] = seq_logp[first:int(at[-1]) + 1]
        return out  # type: ignore[return-value]

    @torch.no_grad()
    def recompute_logprobs(self, trajectories: Sequence[Trajectory]) -> float:
        """Replace recorded sampling log-probs by the trainer's; return the largest change."""
        largest = 0.0
        for t, fresh in zip(trajectories, self.current_logprobs(trajectories)):
            at = 0
            for segment in t.segments:
                n = len(segment.token_ids)
                new = fresh[at:at + n]
                largest = max(largest, (new - torch.tensor(segment.logprobs)).abs().max().item() if n else 0.0)
                segment.logprobs = new.tolist()
                at += n
        return largest

    def train_iteration(self, trajectories: Sequence[Trajectory],
                        response_weights: Sequence[list[float]] | None = None) -> dict[str, float]:
        """The training phase over one iteration's scored trajectories (module docstring).

        `response_weights`: optional per-response-token loss weights (see `build_train_batch`).
        """
        start = time.perf_counter()
        c = self.config
        if c.reset_optimizer:
            self.optimizer = self._new_optimizer()
        metrics: dict[str, float] = {}
        if c.recompute_old_logprobs:
            metrics["train/old_logprob_max_diff"] = self.recompute_logprobs(trajectories)
        rewards = torch.tensor([float(t.reward) for t in trajectories])
        advantages, m = opmd_advantages(rewards, group_indices(trajectories), self.loss_config.tau,
                                        self.loss_config.baseline)
        metrics.update(m)
        order = list(range(len(trajectories)))
        steps, sums, tokens = 0, {}, 0
        for epoch in range(c.epochs):
            self.rng.shuffle(order)
            for start_at in range(0, len(order), c.mini_batch_size):
                chosen = order[start_at:start_at + c.mini_batch_size]
                batch = build_train_batch([trajectories[i] for i in chosen], advantages[chosen],
                                          c.row_tokens, self.pad_id,
                                          None if response_weights is None else [response_weights[i] for i in chosen])
                step_metrics = self.step(batch)
                if steps == 0 and not c.recompute_old_logprobs:
                    # before the first update θ = θi: any gap is engine vs trainer numerics
                    metrics["train/old_logprob_max_diff"] = step_metrics["train/logprob_gap_max"]
                for key, value in step_metrics.items():
                    sums[key] = sums.get(key, 0.0) + value
                steps += 1
                tokens += sum(len(trajectories[i].prompt_ids) + trajectories[i].num_response_tokens
                              for i in chosen)
        metrics.update({k: v / max(steps, 1) for k, v in sums.items() if k != "train/logprob_gap_max"})
        elapsed = time.perf_counter() - start
        metrics.update({"train/steps": steps, "perf/train_s": elapsed,
                        "perf/train_tokens_per_s": tokens / max(elapsed, 1e-9)})
        return metrics
