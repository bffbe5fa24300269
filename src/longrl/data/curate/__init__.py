"""Offline curation of the RL prompt set (SPEC §1, paper §2.1): `longrl curate`.

The package: `text.py` (the text rules), `sampled.py` (the steps that sample from a model),
`select.py` (difficulty range, tag balance, the tag report), `job.py` (the pipeline and its
outputs). Each step is a function that takes prompts and returns a `StepResult`: the prompts it kept
(copies, never the caller's objects mutated), a `Drop` record for every prompt it removed (which
step, which rule, the evidence) and a few flat stats. `curate` runs the steps a `CurateConfig`
names, in its order; `build_report` turns the outcome into counts per tag and difficulty bucket
and dropped counts per reason with examples.

The steps and their rules:

- `exact_dedupe`: same text after Unicode NFKC and whitespace collapse (case kept: `X` and `x`
  differ in math). The first occurrence stays.
- `near_dedupe`: MinHash LSH (datasketch) over word (or character) shingles of the lower-cased
  text; a later prompt whose estimated Jaccard similarity to a kept one reaches the threshold is
  dropped. **ours**, for template-generated problems (reasoning-gym, GSM-symbolic), which share
  almost every shingle and differ in a short slot: shingles in more than `common_share` of the
  prompts (and in more than 3) are boilerplate and left out of the similarity, and the two
  prompts must also contain the same numbers in the same order.
- `decontaminate`: a training prompt is dropped when one of its word n-grams (n = 13 by default,
  tokens are lower-cased words and single punctuation marks) appears in an evaluation prompt; a
  prompt shorter than n tokens is dropped when all of it appears in one. n-grams common to an
  eval set (same boilerplate rule) are ignored. For short templated questions a template n-gram
  plus one slot value can still reach 13 tokens; whole-question matching (n above the question
  length) is then the right test (configs/curate_gym.toml).
- `exclude_guessable` (answers easy to guess, SPEC §1), rules tried in this order:
  multiple choice: the question lists options `(A) (B)` or lines `A. / B)` (capitals, both A
  and B), says "which of the following" or "answer choices", or the reference is a lone capital
  letter A-E; true/false: the reference is true/false/yes/no (any case, in `\\text{}` or `$`), or
  the question asks "true or false" / "yes or no"; proof: the question says prove, proof, "show
  that" or "demonstrate that".
- `easy_to_hack`: the question is wrapped in a template that demands the final answer alone and
  the response is forced to start with the answer (an answer format per reward, e.g. `A: {guess}`
  for the tiny world, `<answer>{guess}</answer>` for reasoning-gym: the text before `{guess}` is
  forced, the first line the model writes is the guess), with a short token cap; if any of
  `guesses` (8) guesses is correct the prompt is dropped. **ours**: the forced start, since a
  template alone does not stop a small model from reasoning; template and formats are configurable.
- `pass_rate`: `n` samples (10) at temperature T (1.0) with the chain of thought; difficulty =
  1 - correct / n, stored on `Prompt.difficulty` (and `meta["pass_rate"]`), bucketed into easy /
  medium / hard by two edges. `filter_difficulty` then drops solved prompts (pass rate 1) and
  those outside [min_difficulty, max_difficulty].
- `balance_by_tag`: caps each tag group (`max_per_tag`) and/or keeps target shares among named
  groups; which prompts of a group stay is a seeded draw.

Correctness in the model-based steps comes from the reward registry: `RewardRouter` picks each
prompt's reward (the loader's `meta["reward"]`, else the first rule whose key is the prompt's
source, source family or one of its tags), and a response is correct when the reward reaches
`judge.correct_threshold`. Reward errors are counted, not raised (`rewards/score.py`).

Order of the default pipeline: text rules first (free), then the easy-to-hack filter (8 short
guesses), then the pass rate (10 long samples) on what is left, then balancing on the final set.
"""

from longrl.data.curate.job import Curation, build_report, curate, prompt_row, render_markdown, run_curate, write_outputs
from longrl.data.curate.sampled import Judge, RewardRouter, easy_to_hack, guess_text, parse_pairs, pass_rate
from longrl.data.curate.select import balance_by_tag, difficulty_bucket, filter_difficulty, tag_report
from longrl.data.curate.text import (BUCKETS, GUESSABLE_RULES, UNLABELLED, CurateError, Drop, StepResult, decontaminate,
                                     exact_dedupe, exclude_guessable, near_dedupe, normalize_text, shingles)

__all__ = [
    "BUCKETS", "GUESSABLE_RULES", "UNLABELLED", "Curation", "CurateError", "Drop", "Judge", "RewardRouter",
    "StepResult", "balance_by_tag", "build_report", "curate", "decontaminate", "difficulty_bucket", "easy_to_hack",
    "exact_dedupe", "exclude_guessable", "filter_difficulty", "guess_text", "near_dedupe", "normalize_text",
    "parse_pairs", "pass_rate", "prompt_row", "render_markdown", "run_curate", "shingles", "tag_report",
    "write_outputs",
]
