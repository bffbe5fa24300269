"""Repetition detection during generation (SPEC §8, paper §2.6: "detect repeated content during
generation, stop early, optionally penalise").

A `RepetitionDetector` watches one generated token stream, one token at a time, and reports the
first token at which the stream has become repetitive. Two signals, either one fires:

- **loop**: the stream ends in r_p back-to-back copies of one block of `p` tokens, for some
  period `p` in [`min_period`, `max_period`], where r_p = max(`loop_repeats`,
  ceil(`min_loop_tokens` / p)): at least `loop_repeats` copies spanning at least
  `min_loop_tokens` tokens (so `000` in `1000` is not a loop, but 24 equal tokens are).
  Kept incrementally: `run[p]` counts the consecutive latest tokens with x[t] == x[t − p]; the
  stream ends in r copies of a p-block exactly when run[p] >= (r − 1) · p. Cost per token:
  O(max_period − min_period + 1), independent of the stream's length.
- **n-gram**: some n-gram of `ngram_size` tokens (not necessarily adjacent copies) has occurred
  `ngram_repeats` times. Kept with a polynomial rolling hash of the last n tokens and a count per
  hash: O(1) amortised per token. A hash collision could only cause a false alarm, never a miss;
  with a 61-bit modulus it does not happen in practice.

The detector fires at most once; the token that completes the repetition is the last token of
the stream (the engine stops there with finish reason `repetition`). `prime(prefix)` feeds
earlier tokens (a partial rollout's earlier segments) without reporting, so a continued
trajectory is judged on its whole response.

The penalty is reward-side and not applied here: the loop subtracts `RepetitionConfig.penalty`
from the reward of trajectories that finished with `repetition` (recorded in reward info).
"""

from __future__ import annotations

from collections.abc import Iterable

from longrl.config import RepetitionConfig

_MOD = (1 << 61) - 1
_BASE = 1_000_003


class RepetitionDetector:
    """Incremental loop / repeated-n-gram detector over one token stream."""

    def __init__(self, config: RepetitionConfig):
        self.config = config
        self.history: list[int] = []
        self.periods = range(config.min_period, config.max_period + 1)
        self.run = {p: 0 for p in self.periods}  # consecutive latest t with x[t] == x[t-p]
        # run length at which period p is a loop: (r_p - 1) * p, r_p as in the module docstring
        self.needed = {p: (max(config.loop_repeats, -(-config.min_loop_tokens // p)) - 1) * p
                       for p in self.periods}
        self.counts: dict[int, int] = {}  # n-gram hash -> occurrences
        self.hash = 0
        self.drop_factor = pow(_BASE, config.ngram_size - 1, _MOD) if config.ngram_size > 0 else 0
        self.fired: str | None = None  # "loop" or "ngram" once detected

    def prime(self, tokens: Iterable[int]) -> None:
        """Feed earlier tokens of the same response; a detection among them is kept silently."""
        for t in tokens:
            self.feed(t)

    def feed(self, token: int) -> bool:
        """Append one token; True exactly once, at the token that makes the stream repetitive."""
        h, c = self.history, self.config
        h.append(token)
        n = len(h)
        found = None
        for p in self.periods:  # loop signal
            if n > p and h[-1] == h[-1 - p]:
                self.run[p] += 1
                if self.run[p] >= self.needed[p]:
                    found = found or "loop"
            else:
                self.run[p] = 0
        if c.ngram_size > 0:  # n-gram signal: rolling hash of the last ngram_size tokens
            if n > c.ngram_size:
                self.hash = (self.hash - (h[-1 - c.ngram_size] + 1) * self.drop_factor) % _MOD
            self.hash = (self.hash * _BASE + token + 1) % _MOD
            if n >= c.ngram_size:
                seen = self.counts.get(self.hash, 0) + 1
                self.counts[self.hash] = seen
                if seen >= c.ngram_repeats:
                    found = found or "ngram"
        if found and self.fired is None:
            self.fired = found
            return True
        return False


def detector_factory(config: RepetitionConfig):
    """A zero-argument factory of fresh detectors for `SamplingParams.detector`, or None if off."""
    if not config.enabled:
        return None
    return lambda: RepetitionDetector(config)


def apply_penalty(trajectories, penalty: float) -> dict[str, float]:
    """Subtract `penalty` from the reward of trajectories stopped for repetition (reward side)."""
    hits = 0
    for t in trajectories:
        if t.finish_reason == "repetition":
            hits += 1
            if penalty:
                t.reward = float(t.reward) - penalty
                t.reward_info["repetition_penalty"] = -penalty
    return {"reward/repetition_share": hits / max(len(trajectories), 1)}
