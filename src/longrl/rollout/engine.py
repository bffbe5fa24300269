"""The inference-engine seam and the Hugging Face transformers engine.

An `InferenceEngine` turns `GenerationRequest`s (prompt ids, optionally an earlier response
segment to continue, and a per-request token cap) into `Completion`s (token ids, per-token
log-probs under the temperature-scaled distribution, finish reason). The loop holds the engine
next to the trainer in one process (colocated) and pushes weights into it after every training
phase with `load_weights`.

`HFEngine` samples with a KV cache in left-padded batches. Requests are sorted by context length
so a batch pads little. Its log-probs are those of the full temperature-scaled distribution,
before top-p truncation (the distribution the trainer recomputes); greedy decoding
(temperature 0) reports log-probs at temperature 1.

Shape legend: B requests in a batch, L context length, V vocabulary, S new tokens.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

import torch

from longrl.models import token_logprobs
from longrl.types import Completion, GenerationRequest, SamplingParams


class InferenceEngine(Protocol):
    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[Completion]: ...

    def load_weights(self, state: Iterable[tuple[str, torch.Tensor]]) -> None: ...

    def sleep(self) -> None: ...

    def wake(self) -> None: ...

    def score(self, sequences: Sequence[list[int]], prompt_lens: Sequence[int],
              temperature: float = 1.0) -> list[list[float]]: ...


def sample_next(logits: torch.Tensor, temperature: float, top_p: float,
                generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row; return (tokens [B], their log-probs [B]) under softmax(logits/T)."""
    logits = logits.float()
    if temperature <= 0:
        tokens = logits.argmax(-1)
        return tokens, logits.log_softmax(-1).gather(-1, tokens[:, None]).squeeze(-1)
    logprobs = (logits / temperature).log_softmax(-1)  # [B, V]
    probs = logprobs.exp()
    if top_p < 1.0:
        sorted_probs, order = probs.sort(-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (always at least the top token)
        outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # [B]
    return tokens, logprobs.gather(-1, tokens[:, None]).squeeze(-1)


class HFEngine:
    """Batched sampling with a transformers causal LM and its KV cache, in this process."""

    def __init__(self, model, tokenizer, batch_size: int = 256, seed: int = 0):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.max_positions = getattr(model.config, "max_position_embeddings", None)

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
    def score(self, sequences: Sequence[list[int]], prompt_lens: Sequence[int],
              temperature: float = 1.0) -> list[list[float]]:
        """Log-probs of each sequence's tokens after its prompt, under softmax(logits/T).

        Temperature 0 scores at temperature 1, as greedy `generate` reports.
        """
        device = next(self.model.parameters()).device
        temperature = temperature if temperature > 0 else 1.0
        out = []
        for seq, n in zip(sequences, prompt_lens):  # one sequence per forward: no padding to mask
            ids = torch.tensor([seq], device=device)  # [1, T]
            positions = torch.arange(len(seq), device=device)[None]  # [1, T]
            out.append(token_logprobs(self.model, ids, positions, temperature)[0, n:].tolist())
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

    def _budgets(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[int]:
        budgets = []
        for r in requests:
            budget = params.max_new_tokens if r.max_new_tokens is None else min(r.max_new_tokens, params.max_new_tokens)
            if self.max_positions is not None and self._context_len(r) + budget > self.max_positions:
                room = self.max_positions - self._context_len(r)
                if room <= 0:
                    raise ValueError(f"a request's context of {self._context_len(r)} tokens does not "
                                     f"fit the model's {self.max_positions} positions")
                budget = room
            budgets.append(budget)
        return budgets

    @torch.inference_mode()
    def _generate_batch(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[Completion]:
        from transformers import DynamicCache

        device = next(self.model.parameters()).device
        contexts = [r.prompt_ids + r.prefix_ids for r in requests]
        B, L = len(contexts), max(len(c) for c in contexts)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((B, L), pad, dtype=torch.long)
        attention = torch.zeros((B, L), dtype=torch.long)
        for row, ctx in enumerate(contexts):  # left padding keeps the last token aligned
            input_ids[row, L - len(ctx):] = torch.tensor(ctx)
            attention[row, L - len(ctx):] = 1
        input_ids, attention = input_ids.to(device), attention.to(device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)  # [B, L]

        budgets = torch.tensor(self._budgets(requests, params), device=device)  # [B]
        stops = torch.tensor(sorted({self.tokenizer.eos_token_id, *params.stop_token_ids}), device=device)
        S = int(budgets.max())
        tokens = torch.full((B, S), pad, dtype=torch.long, device=device)
        logprobs = torch.zeros((B, S), device=device)
        lengths = torch.zeros(B, dtype=torch.long, device=device)
        stopped = torch.zeros(B, dtype=torch.bool, device=device)
        done = torch.zeros(B, dtype=torch.bool, device=device)
        repeated = torch.zeros(B, dtype=torch.bool, device=device)
        detectors = None
        if params.detector is not None:  # one per request, primed with the earlier segments
            detectors = [params.detector() for _ in requests]
            for detector, request in zip(detectors, requests):
                detector.prime(request.prefix_ids)

        cache = DynamicCache()
        logits = self.model(input_ids=input_ids, attention_mask=attention, position_ids=positions,
                            past_key_values=cache, use_cache=True).logits[:, -1]  # [B, V]
        next_pos = positions[:, -1] + 1  # [B]
        for step in range(S):
            tok, lp = sample_next(logits, params.temperature, params.top_p, self.generator)
            tokens[:, step] = torch.where(done, pad, tok)
            logprobs[:, step] = torch.where(done, 0.0, lp)
            lengths += (~done).long()
            hit_stop = ~done & torch.isin(tok, stops)
            stopped |= hit_stop
            if detectors is not None:
                live, ids = (~done).tolist(), tok.tolist()
                hits = [live[b] and detectors[b].feed(ids[b]) for b in range(B)]
                repeated |= torch.tensor(hits, dtype=torch.bool, device=device) & ~hit_stop
            done |= hit_stop | repeated | (lengths >= budgets)
            if bool(done.all()):
                break
            attention = torch.cat([attention, torch.ones((B, 1), dtype=attention.dtype, device=device)], 1)
            logits = self.model(input_ids=tok[:, None], attention_mask=attention,
                                position_ids=next_pos[:, None], past_key_values=cache,
                                use_cache=True).logits[:, -1]
            next_pos = next_pos + 1

        out = []
        for row, request in enumerate(requests):
            n = int(lengths[row])
            if bool(stopped[row]):
                reason = "stop"
            elif bool(repeated[row]):
                reason = "repetition"
            elif request.max_new_tokens is not None and request.max_new_tokens < params.max_new_tokens:
                reason = "budget"
            else:
                reason = "length"
            out.append(Completion(tokens[row, :n].tolist(), logprobs[row, :n].tolist(), reason))
        return out


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
