"""The inference-engine seam and the Hugging Face transformers engine.

An `InferenceEngine` turns `GenerationRequest`s (prompt ids, optionally an earlier response
segment to continue, and a per-request token cap) into `Completion`s (token ids, per-token
log-probs under the temperature-scaled distribution, finish reason). The loop holds the engine
next to the trainer in one process (colocated) and pushes weights into it after every training
phase with `load_weights`.

`HFEngine` samples with a KV cache in left-padded batches. Requests are sorted by context length
so a batch pads little. Its caps, stops, finish reasons and log-probs are the engine contract's
(`rollout/contract.py`), written once for both engines.

Finished rows leave the running batch. A row that stops (EOS, a stop token, repetition) or
reaches its cap is no longer sampled; once finished rows make up 1/`DROP_EVERY` of the running
batch they are dropped from it, their key/value rows with them (`batch_select_indices`), so
later steps compute only rows that still generate. Without this a long-tailed batch (a few
250-token chains among 20-token answers, the shape of an RL batch) runs every row for the
longest one's steps. Dropping in bulk, not at every finish, bounds the copies of the cache.

Keys and values live in buffers sized for the whole call (`KVBuffer`): a step writes one column
in place, where transformers' `DynamicCache` concatenates, copying the whole cache every step
(the largest single cost of a profiled call at 265-token contexts). Contexts
of very different lengths (continued partial rollouts) are prefilled in groups, each padded to
its own longest context only (`_prefill`).

Sampling randomness is per row, not per batch: at each step the engine draws one uniform number
for every row the batch started with, and a row samples by inverting its CDF at its own number.
A row's tokens therefore depend only on the seed, its place in the sorted batch and its own
logits, not on which other rows are still running (tested: dropping rows changes no sample).

Images (vision-language models, `longrl.vision`): a request's `mm` holds its prompt's image
inputs. A batch with images is prefilled from embeddings with the image features in place of
the prompts' placeholder tokens (the vision tower runs once per distinct `mm`, so the k samples
of a prompt share one pass) and with Qwen2-VL's 3-D positions from the model's own rope index
over each whole context (prompt + earlier segments); each decoding step then places its token
at text index + the row's rope delta on the three axes, so a continued request samples what a
one-shot one does. Text-only batches take the plain path, unchanged.

Not done: refilling freed slots with waiting requests (continuous batching). A new row needs its
own prefill and a cache re-aligned to another padding; the loop sends each call at most
`rollout.batch_size` rows (256; 32 prompts x k 8 by default), so nothing waits.

Shape legend: B requests in a batch, b rows still running, L context length, V vocabulary,
S new tokens.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

import torch
from transformers.cache_utils import Cache, DynamicLayer

from longrl.models import token_logprobs
from longrl.rollout.contract import (
    finish_reason, logprob_temperature, primed_detector, request_budget, stop_cause, stop_token_ids)
from longrl.types import Completion, GenerationRequest, SamplingParams
from longrl.vision import (MultiModal, embed_with_images, is_vision_model, mrope_positions, placeholder_mask,
                           vision_logprobs)


class InferenceEngine(Protocol):
    # True when one call pads every context to its longest (so callers should not mix very
    # different context lengths in one call); False when the engine batches ragged contexts.
    pads_contexts: bool

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[Completion]: ...

    def load_weights(self, state: Iterable[tuple[str, torch.Tensor]]) -> None: ...

    def sleep(self) -> None: ...

    def wake(self) -> None: ...

    def score(self, sequences: Sequence[list[int]], prompt_lens: Sequence[int],
              temperature: float = 1.0) -> list[list[float]]: ...


def sample_next(logits: torch.Tensor, temperature: float, top_p: float,
                uniform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row; return (tokens [B], their log-probs [B]) under softmax(logits/T).

    Row b takes the token where its (top-p truncated) CDF first exceeds `uniform[b]` in [0, 1):
    inverse-CDF sampling, so each row's draw depends on its own number only.
    """
    logits = logits.float()
    logprobs = (logits / logprob_temperature(temperature)).log_softmax(-1)  # [B, V]
    if temperature <= 0:  # greedy: the argmax, reported at T = 1 (contract, 4)
        tokens = logits.argmax(-1)
        return tokens, logprobs.gather(-1, tokens[:, None]).squeeze(-1)
    probs = logprobs.exp()
    if top_p < 1.0:
        sorted_probs, order = probs.sort(-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (always at least the top token)
        outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    cdf = probs.cumsum(-1)  # [B, V]; zero-probability tokens add no step, so are never drawn
    total = cdf[:, -1:]  # [B, 1]
    target = torch.minimum(uniform[:, None].to(cdf) * total, torch.nextafter(total, torch.zeros_like(total)))
    tokens = torch.searchsorted(cdf, target, right=True).squeeze(-1)  # [B]
    return tokens, logprobs.gather(-1, tokens[:, None]).squeeze(-1)


DROP_EVERY = 8  # finished rows leave the running batch once they are 1/8 of it (module docstring)


class KVBuffer(DynamicLayer):
    """One layer's keys and values in buffers sized for the whole generation, [B, H, capacity, D].

    transformers' `DynamicLayer` concatenates each new token onto its cache, copying the whole
    cache at every decoding step; here a step writes one column in place and attention reads a
    view of the filled part. Dropping rows (`batch_select_indices`) copies the filled part once.
    """

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity, self.length = capacity, 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        (B, H, _, Dk), Dv = key_states.shape, value_states.shape[-1]
        self.key_buffer = key_states.new_empty((B, H, self.capacity, Dk))  # [B, H, capacity, Dk]
        self.value_buffer = value_states.new_empty((B, value_states.shape[1], self.capacity, Dv))
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            raise ValueError(f"KV buffer of {self.capacity} positions cannot take position {end}")
        self.key_buffer[:, :, self.length:end] = key_states
        self.value_buffer[:, :, self.length:end] = value_states
        self.length = end
        self.keys, self.values = self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]  # views
        return self.keys, self.values

    def fill(self, rows: slice, keys: torch.Tensor, values: torch.Tensor, batch: int, width: int) -> None:
        """Prefill of some rows of a batch of `batch` rows: their keys/values [b, H, T, D] go
        right-aligned into columns [width - T, width) (left padding); other columns stay 0."""
        if not self.is_initialized:
            self.dtype, self.device = keys.dtype, keys.device
            self.key_buffer = keys.new_zeros((batch, keys.shape[1], self.capacity, keys.shape[3]))
            self.value_buffer = values.new_zeros((batch, values.shape[1], self.capacity, values.shape[3]))
            self.is_initialized = True
        T = keys.shape[-2]
        self.key_buffer[rows, :, width - T:width] = keys
        self.value_buffer[rows, :, width - T:width] = values
        self.length = width
        self.keys, self.values = self.key_buffer[:, :, :width], self.value_buffer[:, :, :width]

    def get_seq_length(self) -> int:
        return self.length

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        for name in ("key_buffer", "value_buffer"):
            old = getattr(self, name)
            new = old.new_empty((len(indices), *old.shape[1:]))
            new[:, :, :self.length] = old[indices, :, :self.length]
            setattr(self, name, new)
        self.keys, self.values = self.key_buffer[:, :, :self.length], self.value_buffer[:, :, :self.length]


def kv_cache(model, capacity: int) -> Cache:
    """A KV cache of `KVBuffer` layers for `model`, for contexts of up to `capacity` tokens."""
    layers = model.config.get_text_config(decoder=True).num_hidden_layers
    return Cache(layers=[KVBuffer(capacity) for _ in range(layers)])


class HFEngine:
    """Batched sampling with a transformers causal LM and its KV cache, in this process."""

    pads_contexts = True  # left-padded batches

    def __init__(self, model, tokenizer, batch_size: int = 256, seed: int = 0):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)
        text_config = model.config.get_text_config(decoder=True)  # a VLM's is its text part's
        self.max_positions = getattr(text_config, "max_position_embeddings", None)

    def load_weights(self, state: Iterable[tuple[str, torch.Tensor]]) -> None:
        params = dict(self.model.named_parameters())
        params.update(dict(self.model.named_buffers()))
        with torch.no_grad():
            for name, tensor in state:
                params[name].copy_(tensor)

    def sleep(self) -> None:  # nothing to free: the engine shares the process with the trainer
        pass

    def wake(self) -> None:
        pass

    @torch.inference_mode()
    def score(self, sequences: Sequence[list[int]], prompt_lens: Sequence[int], temperature: float = 1.0,
              mm: Sequence[MultiModal | None] | None = None) -> list[list[float]]:
        """Log-probs of each sequence's tokens after its prompt, under softmax(logits/T);
        `mm[i]`, optional, the image inputs of sequence i's prompt.

        Temperature 0 scores at temperature 1, as greedy `generate` reports.
        """
        device = next(self.model.parameters()).device
        temperature = logprob_temperature(temperature)
        out = []
        for i, (seq, n) in enumerate(zip(sequences, prompt_lens)):  # one per forward: no padding to mask
            ids = torch.tensor([seq], device=device)  # [1, T]
            if mm is not None and mm[i] is not None:
                logprobs = vision_logprobs(self.model, ids, [mm[i]], prompt_lens=[n], temperature=temperature)[0]
            else:
                positions = torch.arange(len(seq), device=device)[None]  # [1, T]
                logprobs = token_logprobs(self.model, ids, positions, temperature)  # [1, T]
            out.append(logprobs[0, n:].tolist())
        return out

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[Completion]:
        order = sorted(range(len(requests)), key=lambda i: -self._context_len(requests[i]))
        results: list[Completion | None] = [None] * len(requests)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            for i, completion in zip(chunk, self._generate_batch([requests[i] for i in chunk], params)):
                results[i] = completion
        return results  # type: ignore[return-value]

    @staticmethod
    def _context_len(request: GenerationRequest) -> int:
        return len(request.prompt_ids) + len(request.prefix_ids)

    def _left_padded(self, requests: Sequence[GenerationRequest], device) -> tuple[torch.Tensor, ...]:
        """(input ids, attention mask, position ids), each [B, L]: contexts right-aligned so that
        every row's last token sits in the last column."""
        contexts = [r.prompt_ids + r.prefix_ids for r in requests]
        B, L = len(contexts), max(len(c) for c in contexts)
        input_ids = torch.full((B, L), self.tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros((B, L), dtype=torch.long)
        for row, ctx in enumerate(contexts):
            input_ids[row, L - len(ctx):] = torch.tensor(ctx)
            attention[row, L - len(ctx):] = 1
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        return input_ids.to(device), attention.to(device), positions.to(device)

    @torch.inference_mode()
    def _generate_batch(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[Completion]:
        device = next(self.model.parameters()).device
        input_ids, attention, positions = self._left_padded(requests, device)  # [B, L] each
        (B, L), pad_id = input_ids.shape, self.tokenizer.pad_token_id
        budgets = torch.tensor([request_budget(r, params, self.max_positions) for r in requests],
                               device=device)  # [B]
        stop_ids = stop_token_ids(self.tokenizer.eos_token_id, params)
        stops = torch.tensor(stop_ids, device=device)
        S = int(budgets.max())
        tokens = torch.full((B, S), pad_id, dtype=torch.long, device=device)
        logprobs = torch.zeros((B, S), device=device)
        lengths = torch.zeros(B, dtype=torch.long, device=device)
        stopped = torch.zeros(B, dtype=torch.bool, device=device)
        repeated = torch.zeros(B, dtype=torch.bool, device=device)
        detectors = None
        if params.detector is not None:  # one per request, primed with the earlier segments
            detectors = [primed_detector(params.detector, r.prefix_ids) for r in requests]

        cache = kv_cache(self.model, L + S)
        inputs, deltas = self._prefill_inputs(requests, input_ids, attention, positions)
        logits = self._prefill(inputs, attention, cache)  # [B, V]
        attention = torch.cat([attention, attention.new_ones((B, S))], 1)  # [B, L + S]
        live = torch.arange(B, device=device)  # [b]: the batch row of each row in the running batch
        running = torch.ones(B, dtype=torch.bool, device=device)  # [b]: finished rows wait to be dropped
        next_pos = positions[:, -1] + 1  # [b]
        for step in range(S):
            # drawn for all B rows on the CPU generator (see docstring), then picked on the device
            uniform = torch.rand(B, generator=self.generator).to(device)[live]  # [b]
            tok, lp = sample_next(logits, params.temperature, params.top_p, uniform)  # [b], [b]
            at = running.nonzero().squeeze(-1)  # [r]: rows still generating, in the running batch
            rows, new = live[at], tok[at]  # [r], [r]
            tokens[rows, step], logprobs[rows, step] = new, lp[at]
            lengths[rows] += 1
            hit_stop = torch.isin(new, stops)  # [r]
            hit_repeat = self._feed(detectors, rows, new, stop_ids)  # [r]
            stopped[rows], repeated[rows] = hit_stop, hit_repeat
            running[at] = ~(hit_stop | hit_repeat | (lengths[rows] >= budgets[rows]))
            still = int(running.sum())
            if still == 0:
                break
            if len(live) - still >= max(1, len(live) // DROP_EVERY):  # drop the finished rows
                keep = running.nonzero().squeeze(-1)  # [b']
                cache.batch_select_indices(keep)
                live, running, tok, next_pos, attention = (
                    x[keep] for x in (live, running, tok, next_pos, attention))
                deltas = None if deltas is None else deltas[keep]
            logits = self.model(input_ids=tok[:, None], attention_mask=attention[:, :L + step + 1],
                                position_ids=self._step_positions(next_pos, deltas), past_key_values=cache,
                                use_cache=True).logits[:, -1]  # [b, V]
            next_pos = next_pos + 1
        causes = ["stop" if s else "repetition" if r else None
                  for s, r in zip(stopped.tolist(), repeated.tolist())]
        return [Completion(tokens[row, :n].tolist(), logprobs[row, :n].tolist(),
                           finish_reason(request, params, cause, n, self.max_positions))
                for row, (request, n, cause) in enumerate(zip(requests, lengths.tolist(), causes))]

    def _prefill_inputs(self, requests: Sequence[GenerationRequest], input_ids: torch.Tensor,
                        attention: torch.Tensor, positions: torch.Tensor
                        ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """(the prefill's model inputs, each row's rope delta [B] or None). Text: the ids and
        positions [B, L]. With images: embeddings with the image features [B, L, H], positions
        [4, B, L] (`longrl.vision.mrope_positions`) and the deltas that place later tokens."""
        mms = [r.mm for r in requests]
        if all(m is None for m in mms):
            return {"input_ids": input_ids, "position_ids": positions}, None
        if not is_vision_model(self.model):
            raise ValueError(f"a request carries images but the engine's model ({type(self.model).__name__}) has no "
                             "vision tower: use a vision-language model, or send the prompt without images")
        L = input_ids.shape[1]
        starts = [L - self._context_len(r) for r in requests]  # left padding: context at the right
        image_mask = placeholder_mask(self.model, input_ids, starts, [L - len(r.prefix_ids) for r in requests])
        embeds = embed_with_images(self.model, input_ids, image_mask, mms)  # [B, L, H]
        position_ids, deltas = mrope_positions(self.model, input_ids, attention, image_mask, mms)  # [4, B, L], [B]
        return {"inputs_embeds": embeds, "position_ids": position_ids}, deltas

    @staticmethod
    def _step_positions(next_pos: torch.Tensor, deltas: torch.Tensor | None) -> torch.Tensor:
        """Positions of one decoding step: [b, 1], or [4, b, 1] (text index, then the text index
        shifted by the row's rope delta on the three M-RoPE axes) for a batch with images."""
        if deltas is None:
            return next_pos[:, None]
        shifted = (next_pos + deltas)[None, :, None].expand(3, -1, -1)  # [3, b, 1]
        return torch.cat([next_pos[None, :, None], shifted])  # [4, b, 1]

    def _prefill(self, inputs: dict[str, torch.Tensor], attention: torch.Tensor, cache: Cache) -> torch.Tensor:
        """Fill `cache` with the contexts [B, L] (`inputs`: ids or embeddings, and positions);
        the logits at each row's last position [B, V].

        Rows come sorted by context length, longest first. They are prefilled in groups whose
        shortest context is more than half the group's longest, each group padded to its own
        longest only: a 60-token continuation beside a 300-token one costs at most 120 padded
        positions, not 300. Each group's keys/values go right-aligned into the shared cache.
        """
        lengths = attention.sum(-1).tolist()
        starts = [0]
        for row in range(1, len(lengths)):
            if 2 * lengths[row] <= lengths[starts[-1]]:
                starts.append(row)
        if len(starts) == 1:
            return self.model(**inputs, attention_mask=attention, past_key_values=cache, use_cache=True,
                              logits_to_keep=1).logits[:, -1]
        (B, L), logits = attention.shape, []
        for start, end in zip(starts, starts[1:] + [B]):
            width = max(lengths[start:end])  # = lengths[start] when sorted, as `generate` sends them
            part = kv_cache(self.model, width)
            rows, cols = slice(start, end), slice(L - width, L)
            window = {k: v[:, rows, cols] if v.ndim == 3 and k == "position_ids" else v[rows, cols]
                      for k, v in inputs.items()}  # [4, B, L] positions keep their axis first
            logits.append(self.model(**window, attention_mask=attention[rows, cols], past_key_values=part,
                                     use_cache=True, logits_to_keep=1).logits[:, -1])  # [end - start, V]
            for layer, done in zip(cache.layers, part.layers):
                layer.fill(slice(start, end), done.keys, done.values, B, L)
        return torch.cat(logits)

    @staticmethod
    def _feed(detectors, live: torch.Tensor, tok: torch.Tensor, stops: list[int]) -> torch.Tensor:
        """Feed each generating row's new token to its repetition detector; [r] whether the row
        ends by repetition (`stop_cause`: not when the token is also a stop token)."""
        if detectors is None:
            return torch.zeros_like(tok, dtype=torch.bool)
        ended = [stop_cause(t, stops, detectors[row]) == "repetition"
                 for row, t in zip(live.tolist(), tok.tolist())]
        return torch.tensor(ended, dtype=torch.bool, device=tok.device)


def make_engine(config, model, tokenizer, seed: int = 0) -> InferenceEngine:
    """The engine `config.engine` names (a `RolloutConfig`), holding its own copy of `model`.

    The copy is what makes the engine a separate policy replica that `weight_sync` must refresh
    after each training phase, for both engines alike.
    """
    if config.engine == "hf":
        import copy

        return HFEngine(copy.deepcopy(model), tokenizer, config.batch_size, seed=seed)
    if config.engine == "vllm":
        from longrl.rollout.vllm_engine import VLLMEngine

        return VLLMEngine.from_model(model, tokenizer, config, seed=seed)
    raise ValueError(f"rollout.engine is {config.engine!r}: choose `hf` or `vllm`")
