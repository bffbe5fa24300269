"""The curation job's config (`longrl curate`, SPEC §1; `longrl.data.curate`): one table per step."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from longrl.config.loader import ConfigError, opt
from longrl.config.run import ModelConfig, RolloutConfig

CURATE_STEPS = ("exact_dedupe", "near_dedupe", "decontaminate", "exclude_guessable", "easy_to_hack",
                "pass_rate", "balance")


def _pairs_ok(name: str, items: list[str]) -> None:
    for item in items:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise ConfigError(f"{name}: entry {item!r} must look like KEY=VALUE")


@dataclass
class CurateDataConfig:
    """What to curate and what to decontaminate against (`longrl.data.sources` specs, docs/data.md)."""

    train: list[str] = opt([], "Prompt sources to curate (`jsonl:PATH`, `reasoning_gym:leg_counting?size=50`, "
                           "`champ`, ...).")
    eval: list[str] = opt([], "Evaluation sets the training prompts are decontaminated against.")
    on_error: Literal["raise", "skip"] = opt("raise", "A malformed source row: `raise` stops, `skip` "
                                             "reports it on stderr and goes on.")


@dataclass
class CurateRewardConfig:
    """Options of the rewards that `judge.rules` route prompts to, one `[reward.<name>]` table each."""

    __tables__ = "options"

    options: dict[str, dict[str, Any]] = opt({}, "Options of reward <name> (e.g. `[reward.math] timeout_s = 5`).")

    def check_given(self, given: set[str], where: Callable[[str], str]) -> None:
        from longrl.rewards.registry import check_reward

        for name, options in self.options.items():
            check_reward(name, options, where)


@dataclass
class NearDedupeConfig:
    threshold: float = opt(0.8, "Estimated Jaccard similarity of shingle sets at or above which a later "
                           "prompt is dropped.")
    num_perm: int = opt(128, "MinHash permutations (more = tighter estimate).")
    shingle: Literal["word", "char"] = opt("word", "Shingles of words or characters.")
    shingle_size: int = opt(3, "Words (or characters) per shingle; 3 words or 5 chars suit.")
    same_numbers: bool = opt(True, "Near duplicates must also contain the same numbers in order: "
                             "templated problems that differ only in numbers are kept.")

    def __post_init__(self) -> None:
        if not 0 < self.threshold <= 1:
            raise ConfigError(f"near.threshold is {self.threshold}: give a similarity in (0, 1]")
        if self.shingle_size < 1 or self.num_perm < 1:
            raise ConfigError("near.shingle_size and near.num_perm must be at least 1")


@dataclass
class JudgeConfig:
    """Which reward judges a prompt in the model steps, and what counts as correct."""

    rules: list[str] = opt(
        ["reasoning_gym=reasoning_gym", "champ=math", "humaneval=code", "world=world"],
        "`KEY=REWARD`: a prompt whose source, source family (before ':') or tag is KEY is judged by "
        "REWARD (a built-in name or FILE.py:FUNCTION), first match wins; a loader's meta['reward'] "
        "takes precedence.")
    default: str = opt("", "Reward for prompts no rule matches ('' = such a prompt is an error).")
    correct_threshold: float = opt(1.0, "A sample is correct when its reward reaches this.")

    def __post_init__(self) -> None:
        _pairs_ok("judge.rules", self.rules)


@dataclass
class HackConfig:
    """The easy-to-hack filter: answers guessed without a chain of thought (SPEC §1)."""

    guesses: int = opt(8, "Answers sampled without a chain of thought; any correct one drops the prompt "
                       "(SPEC §1: 8).")
    template: str = opt("{question}\n\nReply with the final answer only, without any explanation.",
                        "The user message; `{question}` is replaced by the prompt text.")
    formats: list[str] = opt(
        ["world=A: {guess}", "math=\\boxed{{guess}}", "reasoning_gym=<answer>{guess}</answer>"],
        "`REWARD=FORMAT`, the answer format that reward reads; a guess is forced to start with the "
        "text before `{guess}`, and its first line fills `{guess}`.")
    max_new_tokens: int = opt(24, "Longest guess, in tokens (short: no room to reason).")
    temperature: float = opt(1.0, "Sampling temperature of the guesses.")

    def __post_init__(self) -> None:
        if self.guesses < 1:
            raise ConfigError("hack.guesses must be at least 1")
        if "{question}" not in self.template:
            raise ConfigError("hack.template must contain `{question}` (where the prompt text goes)")
        _pairs_ok("hack.formats", self.formats)
        for item in self.formats:
            if "{guess}" not in item:
                raise ConfigError(f"hack.formats: {item!r} has no `{{guess}}` (where the guess goes)")


@dataclass
class PassRateConfig:
    """Difficulty by pass rate (SPEC §1): n samples with the chain of thought, at rollout.temperature."""

    n_samples: int = opt(10, "Samples per prompt (SPEC §1: 10 at temperature 1.0).")
    bucket_edges: list[float] = opt([0.3, 0.7], "Difficulty d = 1 - pass rate is easy if d < first "
                                    "edge, medium if d < second, else hard.")
    drop_solved: bool = opt(True, "Drop prompts whose every sample was correct (pass rate 1.0).")
    min_difficulty: float = opt(0.0, "Keep prompts with difficulty >= this.")
    max_difficulty: float = opt(1.0, "Keep prompts with difficulty <= this (1.0 keeps never-solved ones).")

    def __post_init__(self) -> None:
        if self.n_samples < 1:
            raise ConfigError("pass_rate.n_samples must be at least 1")
        if len(self.bucket_edges) != 2 or not 0 <= self.bucket_edges[0] <= self.bucket_edges[1] <= 1:
            raise ConfigError(f"pass_rate.bucket_edges is {self.bucket_edges}: give two edges 0 <= a <= b <= 1")
        if not 0 <= self.min_difficulty <= self.max_difficulty <= 1:
            raise ConfigError("pass_rate: need 0 <= min_difficulty <= max_difficulty <= 1")


@dataclass
class BalanceConfig:
    """Tag balance of the curated set; which prompts of a group stay is a seeded draw."""

    tag_prefix: str = opt("", "A prompt's group is its first tag starting with this.")
    max_per_tag: int = opt(0, "Most prompts kept per group (0 = no cap).")
    target_shares: list[str] = opt([], "`TAG=WEIGHT` relative shares among the named groups.")

    def __post_init__(self) -> None:
        _pairs_ok("balance.target_shares", self.target_shares)
        for item in self.target_shares:
            try:
                float(item.split("=", 1)[1])
            except ValueError:
                raise ConfigError(f"balance.target_shares: weight of {item!r} is not a number") from None


@dataclass
class CurateConfig:
    """Offline curation of an RL prompt set (`longrl curate`, SPEC §1; `longrl.data.curate`)."""

    name: str = opt("curate", "Output name: curated.jsonl and the report go to `<out_dir>/<name>/`.")
    out_dir: str = opt("runs", "Parent directory of the output directory.")
    limit: int = opt(0, "Curate only the first N loaded prompts (0 = all).")
    steps: list[str] = opt(list(CURATE_STEPS), "Steps to run, in this order. `easy_to_hack` and "
                           "`pass_rate` sample from model.path; the others are text rules.")
    seed: int = opt(0, "Seed of the engine's sampling and of the balance draw.")
    threads: int = opt(0, "torch intra-op threads (0 = torch default).")
    ngram: int = opt(13, "Decontamination: n of the word n-grams shared with an eval prompt (13 as in GPT-3).")
    common_share: float = opt(
        0.1, "Boilerplate: text in more than this share of the prompts (and in more than 3) - a "
             "template, a standing instruction - is left out of near-duplicate similarity, and n-grams "
             "common to an eval set are not contamination. 1.0 = off.")
    guessable_rules: list[str] = opt(["multiple_choice", "true_false", "proof"],
                                     "Guessable question types to exclude (SPEC §1).")
    report_examples: int = opt(3, "Examples shown per drop reason in the report.")
    chunk_prompts: int = opt(16, "Prompts sent to the engine at a time (progress is reported per chunk).")
    data: CurateDataConfig = field(default_factory=CurateDataConfig)
    near: NearDedupeConfig = field(default_factory=NearDedupeConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    hack: HackConfig = field(default_factory=HackConfig)
    pass_rate: PassRateConfig = field(default_factory=PassRateConfig)
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    reward: CurateRewardConfig = field(default_factory=CurateRewardConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)  # the pass-rate samples

    def __post_init__(self) -> None:
        for step in self.steps:
            if step not in CURATE_STEPS:
                close = difflib.get_close_matches(step, CURATE_STEPS, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"steps: unknown step {step!r}{hint} (steps: {', '.join(CURATE_STEPS)})")
        if not 0 < self.common_share <= 1:
            raise ConfigError(f"common_share is {self.common_share}: give a share in (0, 1] (1.0 = off)")
        if self.ngram < 1:
            raise ConfigError("ngram must be at least 1")
