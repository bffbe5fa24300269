"""Partial rollouts (SPEC §8, paper §2.6.2): a per-iteration token budget, continuation of
unfinished trajectories from the replay buffer, and a policy-version tag on every segment.

The exact policy, at iteration i (the engine holds π_θi, `version` = i):

1. Budget. The iteration may reserve at most `token_budget` output tokens (default
   prompts_per_iter · k · segment_tokens). Every request reserves its cap
   min(segment_tokens, max_new_tokens − tokens the trajectory already has), whether or not it
   uses it, so the accounting is exact before generation.
2. Continuations first. Unfinished trajectories from the buffer are scheduled oldest first (by
   the version of their first segment), each continuing from prompt + all earlier segments
   (`GenerationRequest.prefix_ids`) with the current policy, while their caps fit the budget;
   those that do not fit wait for a later iteration (and keep ageing).
3. New groups fill the rest. n = min(prompts_per_iter, remaining budget // (k · cap)) new prompts
   are drawn, k samples each, so short new trajectories run beside the long ones. An engine that
   batches ragged contexts (vLLM) generates all of them in one call; one that pads every row to
   the longest context (`pads_contexts`, the HF engine) gets continuations and new samples in two
   calls, so new rows are not padded to the longest continuation.
4. Finish. A request that ends with `stop` or `repetition` is finished; one whose response reaches
   `rollout.max_new_tokens` in total is finished as `length`; one that hit its per-iteration cap
   (`budget`) stays unfinished and goes back to the buffer. Each new segment is tagged
   `policy_version = i`.
5. Age. A trajectory's age is i − (version of its first segment) + 1. An unfinished trajectory of
   age >= `max_age` after step 4 (so at most `max_age` segments) is, by `age_policy`, dropped with
   its whole group (`drop`) or force-finished as `length` and scored as it is (`finish`).
6. Groups. Only groups whose k samples are all finished leave the buffer to be scored and
   trained, so the baseline τ log Z stays the mean over the same k samples (SPEC §3). Finished
   members of an incomplete group wait in the buffer unscored. Groups are identified by
   `Trajectory.group` (prompt id + iteration + draw), not the prompt id, so a prompt drawn again
   while an earlier group is open forms a separate group.
7. Loss (`segment_loss`), for tokens sampled by an older policy (version < i):
   - `all`: weight 1;
   - `latest_only`: loss mask 0 (the trajectory's reward still enters its group's baseline);
   - `importance`: weight w_t = min(c, π_θi(y_t) / π_old(y_t)) from the recorded log-probs and
     π_θi's recomputed ones, c = `importance_cap`.
   For `all` and `importance` the OPMD reference log-probs of older tokens are replaced by π_θi's
   (recomputed by the trainer before the first step), so the KL term is always to π_θi as in
   SPEC §3; current-iteration tokens keep the engine's log-probs.

Deviation: the paper's rollout workers run asynchronously; here one process schedules a
budgeted batch per iteration (the same effect on the trained data: long trajectories never hold
an iteration longer than `segment_tokens` decoding steps).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from longrl.buffer import ReplayBuffer, start_version
from longrl.config import PartialRolloutConfig
from longrl.rollout.sample import extend, rollout_metrics
from longrl.types import Prompt, SamplingParams, Trajectory
from longrl.vision import VisionInputs, require_vision


def token_budget(config: PartialRolloutConfig, prompts_per_iter: int, k: int) -> int:
    return config.token_budget or prompts_per_iter * k * config.segment_tokens


def plan(unfinished: Sequence[Trajectory], config: PartialRolloutConfig, budget: int, k: int,
         max_new_tokens: int, prompts_per_iter: int) -> tuple[list[tuple[Trajectory, int]], list[Trajectory], int, int]:
    """Steps 1-3: (continuations with caps, trajectories left waiting, new groups, cap per new sample)."""
    continued, left, used = [], [], 0
    for t in sorted(unfinished, key=start_version):
        cap = min(config.segment_tokens, max_new_tokens - t.num_response_tokens)
        if cap > 0 and used + cap <= budget:
            continued.append((t, cap))
            used += cap
        else:
            left.append(t)
    new_cap = min(config.segment_tokens, max_new_tokens)
    new_groups = min(prompts_per_iter, (budget - used) // (k * new_cap))
    return continued, left, new_groups, new_cap


def partial_rollout(engine, tokenizer, encode: Callable[[Prompt], list[int]], buffer: ReplayBuffer,
                    new_prompts: Callable[[int], list[Prompt]], config: PartialRolloutConfig,
                    prompts_per_iter: int, k: int, params: SamplingParams,
                    version: int, on_finished: Callable[[list[Trajectory]], None] | None = None,
                    vision: VisionInputs | None = None) -> tuple[list[Trajectory], dict[str, float]]:
    """One iteration's rollout phase (module docstring); returns the complete, unscored groups.
    `on_finished` gets the trajectories that finish within this call's segments (`extend`).
    Prompts with images are encoded by `vision` (not `encode`), which also gives their
    continuations their images (`rollout/sample.py`)."""
    budget = token_budget(config, prompts_per_iter, k)
    continued, left, n_new, new_cap = plan(buffer.take_unfinished(), config, budget, k,
                                           params.max_new_tokens, prompts_per_iter)
    fresh = []
    for g, prompt in enumerate(new_prompts(n_new) if n_new else []):
        if prompt.images:
            require_vision(prompt, vision)
        ids = vision.prompt_ids(prompt) if prompt.images else encode(prompt)
        fresh += [Trajectory(prompt, j, ids, group=f"{prompt.id}@{version}:{g}") for j in range(k)]
    work = continued + [(t, new_cap) for t in fresh]
    # an engine that pads every context of a call to the longest gets continuations and new rows
    # in two calls, so new rows are not padded to long contexts (module docstring, step 3)
    split_at = len(continued) if getattr(engine, "pads_contexts", True) else None
    new_tokens, elapsed = extend(engine, tokenizer, work, params, version, split_at,  # steps 4 and tagging
                                 on_finished, vision)
    finished = [t for t, _ in work if t.finish_reason is not None]
    still = [t for t, _ in work if t.finish_reason is None]
    forced = 0
    expired = [t for t in still + left if version - start_version(t) + 1 >= config.max_age]
    for t in expired:
        if config.age_policy == "finish":
            t.finish_reason = "length"
            forced += 1
    if config.age_policy == "finish":
        finished += [t for t in expired]
        still = [t for t in still if t.finish_reason is None]
        left = [t for t in left if t.finish_reason is None]
    for t in finished:
        if not t.text:  # force-finished by age: decoded here
            t.text = tokenizer.decode(t.response_ids, skip_special_tokens=True)
    buffer.add(still + left + finished)
    dropped = buffer.drop_groups({t.group_key for t in expired}) if config.age_policy == "drop" else 0
    complete = buffer.take_complete_groups()

    return complete, rollout_metrics(complete, new_tokens, elapsed) | {
        "rollout/requests": float(len(work)),
        "rollout/continued": float(len(continued)),
        "rollout/new_groups": float(n_new),
        "rollout/budget_reserved": float(sum(cap for _, cap in work)),
        "rollout/budget": float(budget),
        "rollout/new_tokens": float(new_tokens),
        "rollout/aged_out_dropped": float(dropped),
        "rollout/aged_out_finished": float(forced),
        "rollout/old_token_share": old_token_share(complete, version),
    }


def old_token_share(trajectories: Sequence[Trajectory], version: int) -> float:
    """Share of response tokens sampled by a policy older than `version`."""
    total = sum(t.num_response_tokens for t in trajectories)
    old = sum(len(s.token_ids) for t in trajectories for s in t.segments if s.policy_version < version)
    return old / max(total, 1)


def segment_weights(trajectories: Sequence[Trajectory], version: int, mode: str, cap: float,
                    current_logprobs: Sequence[list[float]] | None = None) -> list[list[float]]:
    """Per-response-token loss weights (step 7); 0 means loss mask 0.

    `current_logprobs[j]` are π_θi's log-probs of trajectory j's response tokens (needed for
    `importance`); the recorded `Segment.logprobs` are those of the policy that sampled.
    """
    if mode not in ("all", "latest_only", "importance"):
        raise ValueError(f"unknown segment_loss {mode!r}: use 'all', 'latest_only' or 'importance'")
    out = []
    for j, t in enumerate(trajectories):
        weights, at = [], 0
        for s in t.segments:
            n = len(s.token_ids)
            if s.policy_version >= version or mode == "all":
                weights += [1.0] * n
            elif mode == "latest_only":
                weights += [0.0] * n
            else:
                now = current_logprobs[j][at:at + n]
                weights += [min(cap, math.exp(a - b)) for a, b in zip(now, s.logprobs)]
            at += n
        out.append(weights)
    return out


def has_old_segments(t: Trajectory, version: int) -> bool:
    return any(s.policy_version < version for s in t.segments)


def prepare_loss(trajectories: Sequence[Trajectory], version: int, config: PartialRolloutConfig,
                 current_logprobs: Callable[[Sequence[Trajectory]], list]) -> tuple[list[list[float]] | None, dict]:
    """Step 7 for the trajectories about to be trained: (per-token weights or None, metrics).

    `current_logprobs` is the trainer's π_θi log-prob function (`Trainer.current_logprobs`); it
    is called only on trajectories with older segments, and not at all for `latest_only`. Older
    segments' recorded log-probs are replaced by π_θi's (the OPMD reference) after weighting.
    """
    metrics = {"train/old_token_share": old_token_share(trajectories, version)}
    old = [j for j, t in enumerate(trajectories) if has_old_segments(t, version)]
    if not old:
        return None, metrics
    fresh: dict[int, list[float]] = {}
    if config.segment_loss != "latest_only":
        for j, lp in zip(old, current_logprobs([trajectories[j] for j in old])):
            fresh[j] = [float(x) for x in lp]
    weights = segment_weights(trajectories, version, config.segment_loss, config.importance_cap,
                              [fresh.get(j, []) for j in range(len(trajectories))])
    old_weights = []
    for j, lps in fresh.items():
        at = 0
        for s in trajectories[j].segments:
            n = len(s.token_ids)
            if s.policy_version < version:
                old_weights += weights[j][at:at + n]
                s.logprobs = lps[at:at + n]
            at += n
    if old_weights:
        metrics["train/old_token_weight_mean"] = sum(old_weights) / len(old_weights)
    return weights, metrics
