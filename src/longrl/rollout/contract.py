"""What every `InferenceEngine` promises about caps, stops and log-probs, written once.

Both engines (`rollout/engine.py`'s `HFEngine`, `rollout/vllm_engine.py`'s `VLLMEngine`) call
these functions rather than restating the rules; the tests of this module pin the rules, and the
engines' tests check that each engine follows them.

The contract, for one `GenerationRequest` r sampled under `SamplingParams` p by a model with
`max_positions` positions (None: unlimited):

1. Cap (`request_budget`). The context is r.prompt_ids + r.prefix_ids. The request may generate
   at most min(r.max_new_tokens, p.max_new_tokens, max_positions - len(context)) new tokens (an
   absent r.max_new_tokens or max_positions drops its term). p.max_new_tokens caps the *new*
   tokens only: tokens in r.prefix_ids do not count against it (a caller continuing a partial
   rollout sets r.max_new_tokens to what the whole response has left). A context that leaves no
   position to generate into is an error, not an empty completion.
2. Stops (`stop_token_ids`, `stop_cause`). The stop set is the tokenizer's EOS plus
   p.stop_token_ids, nothing else (no extra EOS ids from a generation config). When p.detector is
   set, each request gets its own detector, primed with r.prefix_ids (`primed_detector`) and fed
   every new token. Generation ends at the first token that is in the stop set (`stop`) or on
   which the detector fires (`repetition`); that token is returned. A token that does both ends
   as `stop`.
3. Finish reason (`finish_reason`). `stop` or `repetition` as in 2; otherwise the request ran to
   its cap (1), and the reason is `budget` when the binding term was r.max_new_tokens alone
   (strictly below both p.max_new_tokens and the room left in the model's positions, so that
   continuing the request could generate more), else `length`. A completion that neither stopped
   nor reached its cap is an engine fault and raises.
4. Log-probs (`logprob_temperature`). Each returned token carries its log-prob under
   softmax(logits / T) over the full vocabulary, the distribution the trainer recomputes. Greedy
   decoding (T <= 0) picks the argmax and reports log-probs at T = 1. (Top-p changes what is
   drawn, not what is reported; `VLLMEngine` deviates here, see its module docstring.)
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from typing import Any, Literal

from longrl.types import FinishReason, GenerationRequest, SamplingParams

StopCause = Literal["stop", "repetition"] | None


def request_budget(request: GenerationRequest, params: SamplingParams,
                   max_positions: int | None = None) -> int:
    """The most new tokens `request` may generate (contract, 1)."""
    context = len(request.prompt_ids) + len(request.prefix_ids)
    budget = params.max_new_tokens
    if request.max_new_tokens is not None:
        budget = min(budget, request.max_new_tokens)
    if max_positions is None:
        return budget
    room = max_positions - context
    if room <= 0:
        raise ValueError(f"a request's context of {context} tokens does not fit the model's "
                         f"{max_positions} positions: shorten the prompt (or the continued "
                         f"response) or use a model with more positions")
    return min(budget, room)


def stop_token_ids(eos_token_id: int | None, params: SamplingParams) -> list[int]:
    """The stop set (contract, 2): the tokenizer's EOS and `params.stop_token_ids`, sorted."""
    eos = () if eos_token_id is None else (eos_token_id,)
    return sorted({*eos, *params.stop_token_ids})


def primed_detector(factory: Callable[[], Any] | None, prefix_ids: Iterable[int]) -> Any | None:
    """A fresh repetition detector from `factory` (`SamplingParams.detector`) that has already
    seen the earlier segments `prefix_ids`; None when there is no factory (contract, 2)."""
    if factory is None:
        return None
    detector = factory()
    detector.prime(list(prefix_ids))
    return detector


def stop_cause(token: int, stops: Collection[int], detector: Any | None = None) -> StopCause:
    """Whether generation ends at the just-sampled `token`, and why (contract, 2).

    Feeds `token` to `detector` (when given), so call it once per token, in order.
    """
    fired = detector is not None and detector.feed(token)
    if token in stops:
        return "stop"  # wins over a detector firing on the same token
    return "repetition" if fired else None


def finish_reason(request: GenerationRequest, params: SamplingParams, stopped_by: StopCause,
                  n_generated: int, max_positions: int | None = None) -> FinishReason:
    """The finish reason of a completion of `request` with `n_generated` new tokens that ended
    because of `stopped_by` (None: no stop token and no repetition) (contract, 3)."""
    if stopped_by is not None:
        return stopped_by
    budget = request_budget(request, params, max_positions)
    if n_generated != budget:
        raise RuntimeError(f"the engine returned {n_generated} tokens without a stop, but the "
                           f"request's cap is {budget}: the engine broke the contract")
    if request.max_new_tokens is None:
        return "length"
    context = len(request.prompt_ids) + len(request.prefix_ids)
    others = params.max_new_tokens if max_positions is None else min(params.max_new_tokens,
                                                                      max_positions - context)
    return "budget" if request.max_new_tokens < others else "length"


def ends_response(reason: FinishReason) -> bool:
    """False for `budget` only: the request's own cap cut the response, which may continue."""
    return reason != "budget"


def logprob_temperature(temperature: float) -> float:
    """The T of the softmax(logits / T) that log-probs are reported under (contract, 4)."""
    return temperature if temperature > 0 else 1.0
