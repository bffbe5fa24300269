"""The training phase of an RL iteration: packing, mini-batches, and the OPMD step (SPEC §3).

Per iteration, over the scored trajectories of the rollout phase:
1. advantages a_j = r_j − τ log Z are computed once per group of k samples (`losses.py`);
2. the optimizer is reset (the reference policy π_θi just changed, SPEC §3): `optimizer_reset`
   `first_moment` (the default) zeroes its momentum only, keeping the second moment and the step
   count; `all` builds a new AdamW (SPEC §3 as written); `none` keeps the whole state (one
   optimizer for the run). The default is a deviation, chosen on the study in docs/rl.md: Adam's
   first step from a fresh state moves every parameter by about ±lr whatever its gradient (the
   learning curve dips after it), while with the old second moment and no momentum the first
   step is (1 − β1) of the usual size and the next ones grow back, a warm-up inside each
   iteration, and no momentum carries over from the previous reference policy;
3. for `epochs` passes, the sequences are shuffled and split into mini-batches of
   `mini_batch_size`; each mini-batch is packed into rows of `row_tokens` tokens and takes one
   optimizer step. Rows are processed in micro-batches (gradient accumulation) to bound memory:
   `max_tokens_per_micro_batch` groups consecutive rows so that rows x longest row stays within
   the budget, each micro-batch cut to its longest row (`packing.micro_batches`); `micro_batch_rows`
   caps the rows per micro-batch.

Device and precision (`device.py`): the policy, each micro-batch and the loss live on the
trainer's device; the weights are float32 masters and forward/backward run under autocast in
the compute dtype (bf16 for `model.dtype = "bfloat16"`). Log-probs go through the LM head in
chunks of `logprob_chunk_tokens` (`logprobs.py`), and with `gradient_checkpointing` each
decoder layer recomputes its activations in backward.

π_θi log-probs are those the engine recorded while sampling; with `recompute_old_logprobs` the
trainer recomputes them before the first step. Either way the largest gap between the engine's
and the trainer's numbers is logged as `train/old_logprob_max_diff` (SPEC §3 asks to record it).

One rank of N (`distributed=True`, `longrl.distributed`): the policy is sharded with FSDP2
(each decoder layer, then the root) and every rank runs the same calls on the same arguments.
Each mini-batch is split over the ranks by tokens (`split_by_tokens`); each rank packs and runs
its share, its loss normalised by the sequences of *all* ranks, and FSDP2 sums the gradients
over ranks (`distributed.shard_model`), so the step is the one-process step on the whole
mini-batch up to summation order. Every forward gathers shards (a collective), so a rank with
fewer micro-batches runs empty ones (one row of padding, no loss token) until all have run as
many. Metrics are reduced over ranks: every rank returns the same dict, and the same values as
one process (sequence means, token means, maxima, the global gradient norm).

Images (vision-language policies, `longrl.vision`): a trajectory whose prompt has images is not
packed. It takes a row of its own after the packed text rows, right-padded, and its log-probs
come from `vision.vision_logprobs` with its prompt's image inputs (from the `VisionInputs` the
trainer is given, shared with the rollout) and an attention mask; a micro-batch holds text rows
or image rows, never both. The loss, its token weights and its normalisation are the same for
both kinds of row. Batches with no image keep the packed path unchanged. Not supported yet:
images in an FSDP2 group (`distributed=True`), which raises.

Shape legend: B packed rows, T tokens per row, N sequences.
"""

from __future__ import annotations

import contextlib
import random
import time
import warnings
from collections.abc import Sequence

import torch

from longrl import distributed as group
from longrl.config import LossConfig, TrainConfig
from longrl.device import attention_implementation, autocast, compute_dtype
from longrl.errors import ModelError
from longrl.logprobs import policy_logprobs, supports_chunked
from longrl.lora import lora_scale, merged_state_dict
from longrl.losses import advantages_for, loss_for
from longrl.models import token_logprobs
from longrl.packing import (count_sequences, build_train_batch, group_indices, micro_batches, one_per_row, pack,
                            row_lengths, split_by_tokens)
from longrl.types import TrainBatch, Trajectory
from longrl.vision import MultiModal, VisionInputs, require_vision, vision_logprobs


# Loss metrics that are means over loss tokens (the others from the losses are means over
# sequences): micro-batches and ranks are weighted by their tokens, so each is the mean over all
# loss tokens of the mini-batch, however it was split.
_TOKEN_MEANS = ("loss/log_ratio_abs_mean", "loss/kl_to_sampler", "loss/clip_fraction")


@contextlib.contextmanager
def _one_process_checkpoint():
    """Silence torch.distributed.checkpoint's warning that it runs in one process: here that is
    what was asked for (a trainer outside a group)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


class _Policy(torch.nn.Module):
    """The forward the trainer calls: per-token log-probs (and entropies) of packed rows.

    Its own module so that FSDP2 can make it the root unit: the chunked path runs the decoder
    and the LM head separately (`logprobs.policy_logprobs`), outside the Hugging Face model's
    forward, and the root's forward is where FSDP2 gathers the embeddings, final norm and head.
    """

    def __init__(self, model: torch.nn.Module, temperature: float, chunk_tokens: int):
        super().__init__()
        self.model = model
        self.temperature, self.chunk_tokens = temperature, chunk_tokens

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, with_entropy: bool = False,
                temperature: float | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[b, T] ids and positions -> (log-probs [b, T], entropies [b, T] or None), at the
        sampling temperature unless `temperature` is given."""
        chunk, temperature = self.chunk_tokens, self.temperature if temperature is None else temperature
        if with_entropy and chunk > 0 and supports_chunked(self.model):
            return policy_logprobs(self.model, input_ids, position_ids, temperature, chunk, True)
        return token_logprobs(self.model, input_ids, position_ids, temperature, chunk), None


class Trainer:
    """Owns the policy and runs the training phase of each iteration, in one process or as one
    rank of an FSDP2 group (module docstring)."""

    def __init__(self, model, train: TrainConfig, loss: LossConfig, pad_id: int,
                 temperature: float = 1.0, seed: int = 0, device: torch.device | str | None = None,
                 dtype: str = "float32", distributed: bool = False, cpu_offload: bool = False,
                 vision: VisionInputs | None = None):
        """`device`: where to train (None: where the model is); `dtype`: `model.dtype`, the compute
        precision. The model is moved there and its weights become float32 masters (device.py).

        `distributed`: with a default process group of more than one rank (`distributed.
        init_group`), shard the policy with FSDP2 over all its ranks; every rank then builds its
        Trainer with the same arguments (and `seed`) and calls each public method in the same
        order. `cpu_offload`: FSDP2 keeps shards and optimizer state in CPU memory (only with a
        group).

        `vision`: the image inputs of prompts with images (the `VisionInputs` of the policy's
        processor, shared with the rollout); needed only when trajectories have images."""
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.vision = vision
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
        self.policy = _Policy(self.model, temperature, train.logprob_chunk_tokens)
        self.distributed = distributed and group.is_distributed()
        self.cpu_offload = cpu_offload and self.distributed
        if self.distributed:
            from torch.distributed.device_mesh import init_device_mesh

            mesh = init_device_mesh(self.device.type, (group.world_size(),))
            group.shard_model(self.model, mesh, self.compute_dtype, self.cpu_offload, root=self.policy)
        self.optimizer = self._new_optimizer()

    def _new_optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        fused = self.device.type == "cuda" and not self.cpu_offload  # offloaded shards step on the CPU
        trainable = [p for p in self.model.parameters() if p.requires_grad]  # the adapters only, with LoRA
        return torch.optim.AdamW(trainable, lr=c.lr, betas=tuple(c.betas), weight_decay=c.weight_decay, fused=fused)

    def _share(self, trajectories: Sequence[Trajectory], chosen: Sequence[int]) -> list[int]:
        """This rank's part of the sequences `chosen` (all of them in one process)."""
        if not self.distributed:
            return list(chosen)
        lengths = [len(trajectories[i].prompt_ids) + trajectories[i].num_response_tokens for i in chosen]
        return [chosen[j] for j in split_by_tokens(lengths, group.world_size())[group.rank()]]

    def _reduce_sum(self, values: dict[str, float]) -> dict[str, float]:
        """Sums over the ranks (the values themselves in one process, even inside a group)."""
        return group.all_reduce_sum(values) if self.distributed else dict(values)

    def _reduce_max(self, values: dict[str, float]) -> dict[str, float]:
        """Maxima over the ranks (the values themselves in one process)."""
        return group.all_reduce_max(values) if self.distributed else dict(values)

    def _micro_batches(self, used: torch.Tensor, split: int | None = None) -> list[tuple[slice, int]]:
        """(rows, width) of each micro-batch of packed rows; `used` [B, T] marks tokens that matter.
        With `split`, rows before it and rows from it on never share a micro-batch (text rows,
        then image rows)."""
        lengths = row_lengths(used)
        if split is None:
            groups = micro_batches(lengths, self.config.max_tokens_per_micro_batch, self.config.micro_batch_rows)
            return [(slice(g.start, g.stop), max(lengths[g.start:g.stop])) for g in groups]
        out, c = [], self.config
        for lo, hi in ((0, split), (split, len(lengths))):
            for g in micro_batches(lengths[lo:hi], c.max_tokens_per_micro_batch, c.micro_batch_rows):
                out.append((slice(lo + g.start, lo + g.stop), max(lengths[lo + g.start:lo + g.stop])))
        return out

    def _image_inputs(self, trajectories: Sequence[Trajectory]) -> list[MultiModal | None] | None:
        """Each trajectory's image inputs (None for a text prompt); None when none has images."""
        if not any(t.prompt.images for t in trajectories):
            return None
        if self.distributed:
            raise ModelError("trajectories with images in an FSDP2 trainer group: not supported yet (the group's "
                             "root forward does not take images); train a vision-language policy in one process "
                             "(cluster.enabled = false)")
        for t in trajectories:
            require_vision(t.prompt, self.vision)
        return [self.vision.mm(t.prompt) if t.prompt.images else None for t in trajectories]

    def _rounds(self, local: int) -> int:
        """Forward passes every rank runs: the most any rank needs. FSDP2 gathers each unit's
        shards in every forward, a collective, so a rank with fewer passes runs empty ones."""
        return int(self._reduce_max({"n": local})["n"])

    def _logprobs(self, input_ids: torch.Tensor, position_ids: torch.Tensor, with_entropy: bool = False,
                  vision: tuple | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-token log-probs [b, T] (and entropies [b, T] when asked and chunking applies).
        Image rows give `vision` = (image inputs per row, attention mask [b, T], prompt lengths)."""
        with autocast(self.device, self.compute_dtype):
            if vision is None:
                return self.policy(input_ids.to(self.device), position_ids.to(self.device), with_entropy)
            mms, mask, prompt_lens = vision
            return vision_logprobs(self.model, input_ids.to(self.device), mms, mask.to(self.device), prompt_lens,
                                   self.temperature, self.config.logprob_chunk_tokens, with_entropy)

    def _empty_inputs(self) -> dict:
        """A micro-batch of one row of two padding tokens and no loss token: it takes part in the
        collectives and contributes zero gradient and zero to every metric."""
        zeros = torch.zeros((1, 2))
        return {"ids": torch.full((1, 2), self.pad_id, dtype=torch.long), "positions": torch.tensor([[0, 1]]),
                "old": zeros, "mask": zeros, "seq_ids": torch.zeros((1, 2), dtype=torch.long),
                "weights": None, "advantages": torch.zeros(1)}

    def _micro_inputs(self, batch: TrainBatch, rows: slice, width: int) -> dict:
        """Rows `rows` of `batch`, cut to `width` tokens: [b, t] each, advantages [N]; image rows
        also carry `vision` (see `_logprobs`)."""
        on = lambda x: None if x is None else x[rows, :width]  # noqa: E731  [b, t]
        vision = None
        if batch.mm is not None and batch.mm[rows.start] is not None:  # a micro-batch of image rows
            vision = (batch.mm[rows], on(batch.attention_mask), batch.prompt_lens[rows])
        return {"ids": on(batch.input_ids), "positions": on(batch.position_ids), "old": on(batch.old_logprobs),
                "mask": on(batch.loss_mask), "seq_ids": on(batch.seq_ids), "weights": on(batch.token_weights),
                "advantages": batch.advantages, "vision": vision}

    def _accumulate(self, inputs: dict, total: int) -> dict[str, float]:
        """Forward and backward of one micro-batch, its loss weighted by its share of the `total`
        sequences; returns its metrics as sums (weighted by its sequences or loss tokens)."""
        on = lambda x: None if x is None else x.to(self.device)  # noqa: E731
        old, mask, seq_ids, weights = (on(inputs[k]) for k in ("old", "mask", "seq_ids", "weights"))
        logp, entropy = self._logprobs(inputs["ids"], inputs["positions"], with_entropy=True,
                                       vision=inputs.get("vision"))  # [b, t] each
        part = count_sequences(seq_ids, mask)
        loss, m = loss_for(self.loss_config, logp, old, mask, seq_ids.clamp(min=0), on(inputs["advantages"]), weights)
        (loss * part / total).backward()
        with torch.no_grad():
            tokens = float(mask.sum())
            sums = {k: v * (tokens if k in _TOKEN_MEANS else part) for k, v in m.items()}
            sums |= {"_tokens": tokens, "_entropy_tokens": 0.0, "_entropy_sum": 0.0,
                     "_gap": ((logp - old).abs() * mask).max().item() if mask.any() else 0.0}
            if entropy is not None:
                sums["_entropy_sum"], sums["_entropy_tokens"] = float((entropy * mask).sum()), tokens
        return sums

    def step(self, batch: TrainBatch | None) -> dict[str, float]:
        """One optimizer step on a packed mini-batch (gradient accumulation over micro-batches).

        In a group, every rank calls it at once with its share of the mini-batch (None: no
        sequence) and gets the same metrics: the loss is normalised by the sequences of all ranks,
        so that FSDP2's summed gradient is the one-process gradient of the whole mini-batch.
        """
        self.policy.train()
        parts = [] if batch is None else self._batch_parts(batch)
        local = 0 if batch is None else count_sequences(batch.seq_ids, batch.loss_mask)
        total = max(int(self._reduce_sum({"n": local})["n"]), 1)
        sums: dict[str, float] = {}
        for i in range(self._rounds(len(parts))):
            inputs = self._micro_inputs(batch, *parts[i]) if i < len(parts) else self._empty_inputs()
            for key, value in self._accumulate(inputs, total).items():
                sums[key] = max(sums.get(key, 0.0), value) if key == "_gap" else sums.get(key, 0.0) + value
        gap = self._reduce_max({"_gap": sums.pop("_gap")})["_gap"]
        sums = self._reduce_sum(sums)
        metrics = {k: v / (max(sums["_tokens"], 1.0) if k in _TOKEN_MEANS else total)
                   for k, v in sums.items() if not k.startswith("_")}
        if sums["_entropy_tokens"]:  # nats per loss token, at the sampling T
            metrics["train/entropy"] = sums["_entropy_sum"] / sums["_entropy_tokens"]
        if self.config.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
            # sharded gradients give a DTensor norm; its full value is the global norm
            metrics["train/grad_norm"] = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        metrics["train/logprob_gap_max"] = gap
        return metrics

    def _batch_parts(self, batch: TrainBatch) -> list[tuple[slice, int]]:
        """Micro-batches of a batch: of its packed rows up to their last loss token, and of its
        image rows over all their tokens (the prompt's image placeholders must stay whole)."""
        if batch.mm is None:
            return self._micro_batches(batch.loss_mask > 0)
        used = (batch.loss_mask > 0) | batch.attention_mask.bool()  # [B, T]
        return self._micro_batches(used, split=sum(m is None for m in batch.mm))

    @torch.no_grad()
    def _score(self, trajectories: Sequence[Trajectory]) -> list[torch.Tensor]:
        """Response log-probs of `trajectories` (this rank's share): text ones packed, those with
        images one per row (`_score_images`)."""
        mms = self._image_inputs(trajectories)
        if mms is None:
            return self._score_packed(trajectories)
        out: list[torch.Tensor | None] = [None] * len(trajectories)
        for kind in (False, True):
            chosen = [j for j, m in enumerate(mms) if (m is not None) == kind]
            subset = [trajectories[j] for j in chosen]
            scored = self._score_images(subset, [mms[j] for j in chosen]) if kind else self._score_packed(subset)
            for j, value in zip(chosen, scored):
                out[j] = value
        return out  # type: ignore[return-value]

    def _score_images(self, trajectories: Sequence[Trajectory], mms: Sequence[MultiModal]) -> list[torch.Tensor]:
        """Response log-probs of trajectories with images, one sequence per row, in micro-batches."""
        if not trajectories:
            return []
        rows = one_per_row([t.prompt_ids + t.response_ids for t in trajectories], [], self.pad_id)
        mask = (rows.seq_ids >= 0).long()  # [B, T]
        out = []
        for chunk, width in self._micro_batches(mask.bool()):
            part = trajectories[chunk]
            vision = (list(mms[chunk]), mask[chunk, :width], [len(t.prompt_ids) for t in part])
            logp = self._logprobs(rows.input_ids[chunk, :width], rows.position_ids[chunk, :width],
                                  vision=vision)[0].float().cpu()  # [b, t]
            out += [row[len(t.prompt_ids):len(t.prompt_ids) + t.num_response_tokens] for t, row in zip(part, logp)]
        return out

    def _score_packed(self, trajectories: Sequence[Trajectory]) -> list[torch.Tensor]:
        """Response log-probs of text `trajectories` (this rank's share), one forward per
        micro-batch of packed rows, plus empty forwards up to the most any rank runs."""
        parts: list[tuple[slice, int]] = []
        if trajectories:
            rows = pack([t.prompt_ids + t.response_ids for t in trajectories], [], self.config.row_tokens,
                        self.pad_id)
            parts = self._micro_batches(rows.seq_ids >= 0)
        out: list[torch.Tensor | None] = [None] * len(trajectories)
        for i in range(self._rounds(len(parts))):
            if i >= len(parts):
                empty = self._empty_inputs()
                self._logprobs(empty["ids"], empty["positions"])
                continue
            chunk, width = parts[i]
            logp = self._logprobs(rows.input_ids[chunk, :width], rows.position_ids[chunk, :width])[0]
            for seq_row, seq_logp in zip(rows.seq_ids[chunk, :width], logp.float().cpu()):  # [t] each
                for j in seq_row[seq_row >= 0].unique().tolist():
                    at = (seq_row == j).nonzero()  # this sequence's columns, contiguous
                    first = int(at[0]) + len(trajectories[j].prompt_ids)
                    out[j] = seq_logp[first:int(at[-1]) + 1]
        return out  # type: ignore[return-value]

    @torch.no_grad()
    def current_logprobs(self, trajectories: Sequence[Trajectory]) -> list[torch.Tensor]:
        """The current policy's log-prob of each response token, one [n_response] CPU tensor each.

        The sequences are packed into rows of `row_tokens` as for training and scored in the same
        micro-batches (one forward per sequence cost ~6x more on the small models measured in
        docs/rollout.md). In a group each rank scores its share (split by tokens) and the shares
        are exchanged: every rank returns the whole list.
        """
        if not trajectories:
            return []
        self.policy.eval()
        mine = self._share(trajectories, range(len(trajectories)))
        scored = self._score([trajectories[i] for i in mine])
        if not self.distributed:
            return scored
        self.policy.reshard()  # the root unit keeps its gathered weights after a no-grad forward
        out: list[torch.Tensor | None] = [None] * len(trajectories)
        for indices, values in group.all_gather_objects((mine, scored)):
            for i, value in zip(indices, values):
                out[i] = value
        return out  # type: ignore[return-value]

    @torch.no_grad()
    def token_logprobs(self, input_ids: torch.Tensor, position_ids: torch.Tensor,
                       temperature: float = 1.0) -> torch.Tensor:
        """log p(input_ids[:, t] | input_ids[:, <t]) [B, T] on the CPU, 0 at t = 0 (e.g. the weight
        sync probe at temperature 1). In a group every rank passes the same rows and gets the
        same result: under FSDP2 the policy must be run through the trainer, not `self.model`,
        whose embeddings and LM head are gathered only by the root unit (`_Policy`)."""
        self.policy.eval()
        with autocast(self.device, self.compute_dtype):
            logp = self.policy(input_ids.to(self.device), position_ids.to(self.device),
                               temperature=temperature)[0]  # [B, T]
        if self.distributed:
            self.policy.reshard()
        return logp.float().cpu()

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
        In a group every rank passes the whole list; each mini-batch is split over the ranks by
        tokens (`split_by_tokens`) and every rank returns the same metrics.
        """
        start = time.perf_counter()
        c = self.config
        if c.optimizer_reset == "all":
            self.optimizer = self._new_optimizer()
        elif c.optimizer_reset == "first_moment":
            for state in self.optimizer.state.values():
                state["exp_avg"].zero_()
        metrics: dict[str, float] = {}
        if c.recompute_old_logprobs:
            metrics["train/old_logprob_max_diff"] = self.recompute_logprobs(trajectories)
        rewards = torch.tensor([float(t.reward) for t in trajectories])
        advantages, m = advantages_for(self.loss_config, rewards, group_indices(trajectories))
        metrics.update(m)
        order = list(range(len(trajectories)))
        mms = self._image_inputs(trajectories)
        steps, sums, tokens = 0, {}, 0
        for epoch in range(c.epochs):
            self.rng.shuffle(order)  # the same order on every rank: same seed, same calls
            for start_at in range(0, len(order), c.mini_batch_size):
                chosen = order[start_at:start_at + c.mini_batch_size]
                mine = self._share(trajectories, chosen)
                weights = None if response_weights is None else [response_weights[i] for i in mine]
                mm = None if mms is None else [mms[i] for i in mine]
                batch = build_train_batch([trajectories[i] for i in mine], advantages[mine], c.row_tokens,
                                          self.pad_id, weights, mm) if mine else None
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
        elapsed = self._reduce_max({"s": time.perf_counter() - start})["s"]  # the slowest rank's
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        metrics.update({"train/steps": steps, "train/trainable_params": float(trainable), "perf/train_s": elapsed,
                        "perf/train_tokens_per_s": tokens / max(elapsed, 1e-9)})
        return metrics

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The policy's full weights as CPU float32 tensors, keyed as the Hugging Face model's
        (with LoRA: merged into the plain model's weights).

        In a group every rank must call it (the shards are gathered), and only **rank 0** gets
        the tensors: the other ranks get an empty dict (one full copy per machine, not per rank).
        In one process: copies of the weights.
        """
        if not self.distributed:
            state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        else:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            options = StateDictOptions(full_state_dict=True, cpu_offload=True)  # cpu_offload: rank 0 only
            state = get_model_state_dict(self.model, options=options)
        scale = lora_scale(self.model)
        return state if scale is None else merged_state_dict(state, scale)  # LoRA: the plain model's (lora.py)

    def save_pretrained(self, path, tokenizer=None) -> None:
        """Write the policy (and `tokenizer`, when given) as a Hugging Face model directory that
        `AutoModelForCausalLM.from_pretrained` loads. Every rank calls it; rank 0 writes."""
        weights = self.full_state_dict()
        if not self.distributed or group.rank() == 0:
            # a tied weight once, under its first name, as the model's own save_pretrained writes
            # it: an explicit state dict would also store the alias (lm_head.weight)
            names = {n for n, _ in self.model.named_parameters(remove_duplicate=False)}
            aliases = names - {n for n, _ in self.model.named_parameters()}
            self.model.save_pretrained(path, state_dict={k: v for k, v in weights.items() if k not in aliases})
            if tokenizer is not None:
                tokenizer.save_pretrained(path)
        if self.distributed:
            group.barrier()  # the directory is complete before any rank returns

    def _checkpoint_state(self) -> dict:
        """Model (and, when it is kept across iterations, optimizer) state, sharded in a group."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        state = {"model": get_model_state_dict(self.model)}
        if self.config.optimizer_reset != "all":
            state["optimizer"] = get_optimizer_state_dict(self.model, self.optimizer)
        return state

    def save_state(self, path) -> None:
        """Save a resumable checkpoint of the model and, unless `optimizer_reset = "all"`, the optimizer to
        directory `path` (torch.distributed.checkpoint: each rank writes its shards). Every rank
        calls it with the same path, on a filesystem they share."""
        import torch.distributed.checkpoint as dcp

        # no_dist: a one-process trainer writes alone even inside someone else's process group
        with _one_process_checkpoint():
            dcp.save(self._checkpoint_state(), checkpoint_id=str(path), no_dist=not self.distributed)

    def load_state(self, path) -> None:
        """Restore what `save_state` wrote to `path`, in place; the group may have another size."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        state = self._checkpoint_state()
        with _one_process_checkpoint():
            dcp.load(state, checkpoint_id=str(path), no_dist=not self.distributed)
        set_model_state_dict(self.model, state["model"])
        if "optimizer" in state:
            set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"])
