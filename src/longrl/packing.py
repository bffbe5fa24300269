"""Laying sequences out in rows for the trainer: packing, batches, micro-batches, rank shares.

`pack` lays sequences end to end in rows of a token budget, each with positions that restart per
sequence, so attention stays inside a sequence (the model's attention derives its per-sequence
mask from the positions, `device.attention_implementation`); `one_per_row` gives each sequence a
row of its own (sequences with images). `build_train_batch` turns scored trajectories into a
`TrainBatch`; `micro_batches` groups rows for gradient accumulation under a token budget;
`split_by_tokens` deals a mini-batch to the ranks of an FSDP2 group. Shape legend: B rows, T
tokens per row, N sequences.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from longrl.types import TrainBatch, Trajectory
from longrl.vision import MultiModal


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


def one_per_row(sequences: Sequence[list[int]], per_token: Sequence[Sequence[list[float]]],
                pad_id: int) -> PackedRows:
    """Each sequence in a row of its own, right-padded (sequences with images: `vision_logprobs`
    takes one per row). Padding has seq_id -1; `per_token` as in `pack`."""
    B, T = len(sequences), max(len(s) for s in sequences)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    seq_ids = torch.full((B, T), -1, dtype=torch.long)
    values = [torch.zeros((B, T)) for _ in per_token]
    for j, seq in enumerate(sequences):
        n = len(seq)
        input_ids[j, :n] = torch.tensor(seq)
        seq_ids[j, :n] = j
        for value, source in zip(values, per_token):
            value[j, :n] = torch.tensor(source[j], dtype=torch.float32)
    return PackedRows(input_ids, torch.arange(T).expand(B, T).clone(), values, seq_ids)


def _rows_of(indices: list[int], sequences, per_token, layout) -> PackedRows:
    """`layout(sequences, per_token)` of the sequences `indices`, their seq_ids the indices themselves."""
    rows = layout([sequences[j] for j in indices], [[v[j] for j in indices] for v in per_token])
    index = torch.tensor(indices)
    rows.seq_ids = torch.where(rows.seq_ids >= 0, index[rows.seq_ids.clamp(min=0)], -1)
    return rows


def _stacked(parts: Sequence[PackedRows], pad_id: int) -> PackedRows:
    """The rows of `parts`, one after another, right-padded to the widest (padding: seq_id -1)."""
    T = max(p.input_ids.shape[1] for p in parts)
    widen = lambda x, fill: torch.nn.functional.pad(x, (0, T - x.shape[1]), value=fill)  # noqa: E731  [b, T]
    return PackedRows(torch.cat([widen(p.input_ids, pad_id) for p in parts]),
                      torch.cat([widen(p.position_ids, 0) for p in parts]),
                      [torch.cat([widen(p.values[k], 0.0) for p in parts]) for k in range(len(parts[0].values))],
                      torch.cat([widen(p.seq_ids, -1) for p in parts]))


def build_train_batch(trajectories: Sequence[Trajectory], advantages: torch.Tensor,
                      row_tokens: int, pad_id: int,
                      response_weights: Sequence[list[float]] | None = None,
                      mm: Sequence[MultiModal | None] | None = None) -> TrainBatch:
    """Pack prompt + response of each trajectory; only response tokens enter the loss.

    `response_weights[j]`, optional, is a loss weight per response token of trajectory j; a
    weight of 0 puts the token outside the loss mask (partial rollouts, `rollout/partial.py`).
    `mm[j]`, optional, is the image inputs of trajectory j's prompt (None for a text prompt):
    such trajectories go one per row after the packed text rows (`TrainBatch`).
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
    images = [j for j, m in enumerate(mm or []) if m is not None]
    if images:
        text = [j for j, m in enumerate(mm) if m is None]
        parts = [_rows_of(text, sequences, per_token, lambda s, v: pack(s, v, row_tokens, pad_id))] if text else []
        rows = _stacked(parts + [_rows_of(images, sequences, per_token, lambda s, v: one_per_row(s, v, pad_id))],
                        pad_id)
    else:
        rows = pack(sequences, per_token, row_tokens, pad_id)
    loss_mask, old_logprobs = rows.values[:2]
    seq_ids = torch.where(loss_mask > 0, rows.seq_ids, -1)
    rewards = torch.tensor([float(t.reward) for t in trajectories])
    token_weights = rows.values[2] if response_weights is not None else None
    batch = TrainBatch(rows.input_ids, rows.position_ids, loss_mask, old_logprobs, seq_ids,
                       advantages, rewards, len(trajectories), token_weights)
    if images:  # the image rows are the last len(images) rows
        n_text = rows.input_ids.shape[0] - len(images)
        batch.mm = [None] * n_text + [mm[j] for j in images]
        batch.prompt_lens = [0] * n_text + [len(trajectories[j].prompt_ids) for j in images]
        batch.attention_mask = (rows.seq_ids >= 0).long()  # [B, T]
        batch.attention_mask[:n_text] = 0
    return batch


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


def count_sequences(seq_ids: torch.Tensor, loss_mask: torch.Tensor) -> int:
    """Sequences with at least one loss token."""
    return int(seq_ids[loss_mask > 0].unique().numel())


def group_indices(trajectories: Sequence[Trajectory]) -> torch.Tensor:
    """[N] index of each trajectory's prompt group."""
    index: dict[str, int] = {}
    return torch.tensor([index.setdefault(t.group_key, len(index)) for t in trajectories])


def split_by_tokens(lengths: Sequence[int], parts: int) -> list[list[int]]:
    """Deal sequences of `lengths` tokens to `parts` ranks with balanced token counts.

    Greedy, longest first: each sequence goes to the part with the fewest tokens so far (ties:
    the lower part). Deterministic, so every rank computes the same split; each part lists its
    indices in increasing order. A part may be empty when there are fewer sequences than parts.
    """
    load = [0] * parts
    out: list[list[int]] = [[] for _ in range(parts)]
    for j in sorted(range(len(lengths)), key=lambda j: (-lengths[j], j)):
        least = min(range(parts), key=lambda r: (load[r], r))
        out[least].append(j)
        load[least] += lengths[j]
    return [sorted(part) for part in out]
