"""Repetition stop inside vLLM: a batch-level logits processor (vLLM V1 API, imports vLLM).

vLLM has no per-request hook that ends a request from Python, but its logits processors see
every running request's output tokens before each decoding step and may change that step's
logits. `RepetitionStop` feeds each watched request's new tokens to its repetition detector
(`rollout/repetition.py`); once a detector fires, the request's next logits allow only a stop
token, so vLLM samples it and finishes the request at once instead of running to its cap.

The forced token is not the policy's: `VLLMEngine._completion` runs the same detector over the
returned tokens and cuts the completion at the token where it fired (`contract.stop_cause`),
which drops the forced stop token, so the result (tokens, log-probs, finish reason `repetition`)
is what `HFEngine` returns.
A request opts in through `SamplingParams.extra_args[EXTRA_KEY] = (detector factory, earlier
response tokens to prime it with, stop token id)`.

Cost: one detector step per generated token in Python, as in `HFEngine`. vLLM's CPU platform
schedules synchronously, so the processor sees each token before the next step; were it a step
late (asynchronous scheduling), the request would stop a token later and the cut stays exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

from longrl.rollout.contract import primed_detector

EXTRA_KEY = "longrl_repetition"


@dataclass
class _Watch:
    detector: object
    output_ids: list[int]  # vLLM's live list of the request's generated tokens
    stop_token: int
    fed: int = 0
    fired: bool = False


class RepetitionStop(LogitsProcessor):
    """Force a stop token on requests whose repetition detector has fired."""

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        self.watches: dict[int, _Watch] = {}  # batch index -> watch

    def is_argmax_invariant(self) -> bool:
        return False  # it changes what greedy decoding picks, once a detector fires

    @staticmethod
    def _watch(params, _prompt_ids, output_ids: list[int]) -> _Watch | None:
        spec = (params.extra_args or {}).get(EXTRA_KEY)
        if spec is None:
            return None
        factory, prefix_ids, stop_token = spec
        return _Watch(primed_detector(factory, prefix_ids), output_ids, stop_token)

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        process_dict_updates(self.watches, batch_update, self._watch)
        for watch in self.watches.values():
            while not watch.fired and watch.fed < len(watch.output_ids):
                watch.fired = watch.detector.feed(watch.output_ids[watch.fed])
                watch.fed += 1

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        for index, watch in self.watches.items():
            if watch.fired:  # [V] row: only the stop token remains possible
                logits[index] = float("-inf")
                logits[index, watch.stop_token] = 0.0
        return logits
