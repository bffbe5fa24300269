"""The values that flow between stages (DESIGN.md, "The types that flow").

Stages talk only through these types: a sampler yields `Prompt`s, an engine turns
`GenerationRequest`s into `Completion`s, the loop assembles them into `Trajectory`s made of
`Segment`s, rewards score them, and the trainer packs them into a `TrainBatch`.

Shape legend for tensors: B packed rows, T tokens per row, N sequences in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any, Literal

import torch

FinishReason = Literal["stop", "length", "budget", "repetition"]


@dataclass
class Prompt:
    """One RL prompt: the question, how to check an answer, and what it is about."""

    id: str
    text: str  # the user message; engines apply the tokenizer's chat template around it
    answer: str | None = None  # reference answer for rule-based rewards
    tests: list[dict[str, Any]] | None = None  # test cases for code rewards
    tags: list[str] = field(default_factory=list)  # domain / subject / source (SPEC §1)
    difficulty: float | None = None  # 0 easy .. 1 hard, from the data or from curation
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    # chat messages [{role, content}] when the prompt is a conversation (e.g. with a system
    # message); `text` is then its last user message, kept for logs
    messages: list[dict[str, Any]] | None = None  # content: a str, or a list of text/image parts
    # images the question refers to, in order (vision-language prompts): file paths, raw bytes,
    # `{"bytes"|"path": ...}` cells of a `datasets` Image feature, or PIL images; opened by
    # `longrl.data.images.load_image`
    images: list[Any] = field(default_factory=list)


@dataclass
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    stop_token_ids: tuple[int, ...] = ()  # the tokenizer's EOS is always a stop token
    # optional factory of a per-request detector with `prime(prefix_ids)` and `feed(token) -> bool`;
    # `feed` returning True stops that request with finish reason `repetition` (rollout/repetition.py)
    detector: Callable[[], Any] | None = None


@dataclass
class GenerationRequest:
    """Sample a continuation of `prompt_ids + prefix_ids`.

    `prefix_ids` are response tokens sampled earlier (a partial rollout being continued); they
    condition the generation but are not returned. `max_new_tokens`, when set, caps this request
    below `SamplingParams.max_new_tokens` (a per-iteration token budget); hitting it gives finish
    reason `budget` instead of `length`. `mm` holds the image inputs of a prompt with images
    (`longrl.vision.encode_vision_prompt`), whose placeholder tokens are in `prompt_ids`.
    """

    prompt_ids: list[int]
    prefix_ids: list[int] = field(default_factory=list)
    max_new_tokens: int | None = None
    # {"pixel_values": [P, D], "image_grid_thw": [I, 3]} for a prompt with images, else None;
    # requests may share one dict (the k samples of a prompt): engines encode it once
    mm: dict[str, torch.Tensor] | None = None


@dataclass
class Completion:
    token_ids: list[int]
    logprobs: list[float]  # log-prob of each sampled token under the temperature-scaled policy
    finish_reason: FinishReason


@dataclass
class Segment:
    """The tokens one policy version sampled in one iteration (SPEC §8, partial rollouts)."""

    token_ids: list[int]
    logprobs: list[float]
    policy_version: int


@dataclass
class Trajectory:
    """One sampled response to one prompt, possibly built over several iterations."""

    prompt: Prompt
    sample_index: int  # position within the group of k samples of this prompt
    prompt_ids: list[int]
    segments: list[Segment] = field(default_factory=list)
    finish_reason: FinishReason | None = None  # None while unfinished
    reward: float | None = None
    reward_info: dict[str, Any] = field(default_factory=dict)
    text: str = ""  # the decoded response, filled when finished
    group: str = ""  # id of its group of k samples when the prompt id is not enough (partial rollouts)

    @property
    def response_ids(self) -> list[int]:
        return [t for s in self.segments for t in s.token_ids]

    @property
    def response_logprobs(self) -> list[float]:
        return [p for s in self.segments for p in s.logprobs]

    @property
    def num_response_tokens(self) -> int:
        return sum(len(s.token_ids) for s in self.segments)

    @property
    def group_key(self) -> str:
        return self.group or self.prompt.id


@dataclass
class RewardResult:
    score: float
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainBatch:
    """Sequences packed into rows for one optimizer step.

    Each sequence is prompt + response; several sequences share a row, separated by restarting
    `position_ids` (the model's attention then stays inside each sequence).

    Sequences whose prompt has images (vision-language policies, `longrl.vision`) are not packed:
    each has a row of its own after the packed text rows, right-padded, and goes through
    `vision.vision_logprobs` with its image inputs `mm[b]`, `attention_mask` and `prompt_lens`.
    A batch without images leaves these three None.
    """

    input_ids: torch.Tensor  # [B, T] long
    position_ids: torch.Tensor  # [B, T] long, restarts at 0 for every packed sequence
    loss_mask: torch.Tensor  # [B, T] float, 1 on response tokens that enter the loss
    old_logprobs: torch.Tensor  # [B, T] float, log-probs of the sampling policy at each target
    seq_ids: torch.Tensor  # [B, T] long, index into the per-sequence tensors, -1 off-response
    advantages: torch.Tensor  # [N] float, r_j - tau log Z per sequence
    rewards: torch.Tensor  # [N] float
    num_sequences: int
    token_weights: torch.Tensor | None = None  # [B, T] float loss weight per token; None = all 1
    # per row: the image inputs {"pixel_values": [P, D], "image_grid_thw": [I, 3]} of an image row,
    # None on a packed text row (text rows come first); None when no row has images
    mm: list[dict[str, torch.Tensor] | None] | None = None
    attention_mask: torch.Tensor | None = None  # [B, T] long, 1 on the tokens of image rows, 0 elsewhere
    prompt_lens: list[int] | None = None  # per row: an image row's prompt tokens (its placeholders), 0 on text rows
