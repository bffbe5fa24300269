"""The one path from prompts to `Trajectory`s: every command samples through here.

`sample` draws k trajectories per prompt in one call to the engine: the RL loop's rollout,
evaluation, curation (pass rates, easy-to-hack guesses), long2short sampling and the token
efficiency report all use it. `extend` is its core and that of partial rollouts
(`rollout/partial.py`): it grows each trajectory by one segment sampled by one policy version,
sets its finish reason, and decodes the response once it is finished. A one-shot rollout is
thus a partial rollout whose every trajectory finishes within its first segment.

Prompts with images need `vision` (a `longrl.vision.VisionInputs` of the policy's processor):
each such prompt is encoded once, and its image inputs go with every request of its k samples
and of their continuations.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

from longrl.models import encode_prompt
from longrl.rollout.contract import ends_response
from longrl.types import Completion, FinishReason, GenerationRequest, Prompt, SamplingParams, Segment, Trajectory
from longrl.vision import VisionInputs, require_vision


def segment_finish(reason: FinishReason, total: int, max_new_tokens: int) -> FinishReason | None:
    """A segment's engine finish reason -> its trajectory's, None while unfinished.

    Only `budget` leaves a response open, and only while its `total` tokens are below
    `max_new_tokens` (the engine caps a continuation by what the response has left, which it
    reports as `budget`).
    """
    if ends_response(reason):
        return reason
    return "length" if total >= max_new_tokens else None


def prompt_ids(tokenizer, prompt: Prompt, vision: VisionInputs | None = None) -> list[int]:
    """The token ids a prompt's trajectories start from: its chat-templated text, with each image
    expanded to its placeholder tokens when it has images."""
    if prompt.images:
        require_vision(prompt, vision)
        return vision.prompt_ids(prompt)
    return encode_prompt(tokenizer, prompt)


def request(t: Trajectory, cap: int | None, vision: VisionInputs | None = None) -> GenerationRequest:
    """The request that grows `t` by one segment of at most `cap` tokens, with its prompt's images."""
    if not t.prompt.images:
        return GenerationRequest(t.prompt_ids, t.response_ids, cap)
    require_vision(t.prompt, vision)
    return GenerationRequest(t.prompt_ids, t.response_ids, cap, mm=vision.mm(t.prompt))


def _finalise(tokenizer, work: Sequence[tuple[Trajectory, int | None]], positions: Iterable[int],
              completions: Sequence[Completion], max_new_tokens: int, version: int) -> list[Trajectory]:
    """Append each completion as its trajectory's segment; returns the trajectories it finished."""
    finished = []
    for at, c in zip(positions, completions):
        t = work[at][0]
        t.segments.append(Segment(c.token_ids, c.logprobs, version))
        t.finish_reason = segment_finish(c.finish_reason, t.num_response_tokens, max_new_tokens)
        if t.finish_reason is not None:
            t.text = tokenizer.decode(t.response_ids, skip_special_tokens=True)
            finished.append(t)
    return finished


def extend(engine, tokenizer, work: Sequence[tuple[Trajectory, int | None]], params: SamplingParams,
           version: int, split_at: int | None = None,
           on_finished: Callable[[list[Trajectory]], None] | None = None,
           vision: VisionInputs | None = None) -> tuple[int, float]:
    """Grow each trajectory of `work` by one segment of at most its cap (None: no cap of its own).

    Trajectories continue from their response so far. `split_at` sends `work[:split_at]` and
    the rest in two engine calls (for engines that pad every context of a call to the longest).
    `on_finished(trajectories)` gets the trajectories that finished: chunk by chunk as they
    arrive from an engine with `generate_stream` (the cluster's pool, so their rewards can be
    scored while other workers still generate), else once at the end. `vision` gives the image
    inputs of prompts with images (module docstring).
    Returns (new tokens, seconds spent generating).
    """
    requests = [request(t, cap, vision) for t, cap in work]
    bounds = [(0, len(work))] if split_at is None else [(0, split_at), (split_at, len(work))]
    if hasattr(engine, "generate_stream"):
        return _extend_streamed(engine, tokenizer, work, requests, bounds, params, version, on_finished)
    start, completions = time.perf_counter(), []
    for lo, hi in bounds:
        completions += engine.generate(requests[lo:hi], params) if hi > lo else []
    elapsed = time.perf_counter() - start
    finished = _finalise(tokenizer, work, range(len(work)), completions, params.max_new_tokens, version)
    if on_finished is not None:
        on_finished(finished)
    return sum(len(c.token_ids) for c in completions), elapsed


def _extend_streamed(engine, tokenizer, work, requests, bounds, params, version,
                     on_finished) -> tuple[int, float]:
    """`extend` through `engine.generate_stream`; its seconds include finalising the chunks."""
    start, new_tokens = time.perf_counter(), 0
    for lo, hi in bounds:
        if hi == lo:
            continue
        for indices, completions in engine.generate_stream(requests[lo:hi], params):
            positions = [lo + j for j in indices]
            finished = _finalise(tokenizer, work, positions, completions, params.max_new_tokens, version)
            new_tokens += sum(len(c.token_ids) for c in completions)
            if on_finished is not None and finished:
                on_finished(finished)
    return new_tokens, time.perf_counter() - start


def sample(engine, tokenizer, prompts: Sequence[Prompt], k: int, params: SamplingParams, version: int = 0,
           prefixes: Sequence[str] | None = None,
           on_finished: Callable[[list[Trajectory]], None] | None = None,
           vision: VisionInputs | None = None) -> tuple[list[Trajectory], dict[str, float]]:
    """k finished trajectories per prompt, in prompt order, each one segment sampled by `version`.

    `prefixes[i]`, optional, is text every response to prompt i is forced to start with: it
    conditions the generation, becomes part of the trajectory's prompt, and is not in its text.
    `on_finished` and `vision` as in `extend`.
    """
    trajectories = []
    for i, prompt in enumerate(prompts):
        ids = prompt_ids(tokenizer, prompt, vision)
        if prefixes and prefixes[i]:
            ids = ids + tokenizer.encode(prefixes[i], add_special_tokens=False)
        trajectories += [Trajectory(prompt, j, ids) for j in range(k)]
    new_tokens, elapsed = extend(engine, tokenizer, [(t, None) for t in trajectories], params, version,
                                 on_finished=on_finished, vision=vision)
    return trajectories, rollout_metrics(trajectories, new_tokens, elapsed)


def rollout_metrics(finished: Sequence[Trajectory], new_tokens: int, elapsed: float) -> dict[str, float]:
    """`rollout/...` and `perf/rollout...` metrics of the finished trajectories of one rollout."""
    n = max(len(finished), 1)
    tokens = sum(t.num_response_tokens for t in finished)
    return {
        "rollout/trajectories": float(len(finished)),
        "rollout/mean_tokens": tokens / n,
        "rollout/max_tokens": float(max((t.num_response_tokens for t in finished), default=0)),
        "rollout/truncated": sum(t.finish_reason != "stop" for t in finished) / n,
        # mean negative log-prob of sampled tokens: a sample estimate of the policy's entropy
        "rollout/token_nll": -sum(sum(t.response_logprobs) for t in finished) / max(tokens, 1),
        "perf/rollout_s": elapsed,
        "perf/rollout_tokens_per_s": new_tokens / max(elapsed, 1e-9),
    }
