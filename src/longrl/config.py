"""Typed configuration: one dataclass per component, composed into a run config.

A config file is TOML with at most two levels (`[section]` then `key = value`); command-line
overrides use the same paths (`train.lr=3e-4`). Every field documents itself through
`opt(default, help)`, which is what `longrl train --help` prints. Loading is strict: an unknown
key or a value of the wrong type is a `ConfigError` naming the key, the file and line, and the
nearest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message says where and how to fix it."""


def opt(default: Any, help: str) -> Any:
    """A documented dataclass field; mutable defaults are copied per instance."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


# ----------------------------------------------------------------------------------------------
# Component configs
# ----------------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    path: str = opt("", "Hugging Face model directory (weights + tokenizer) to start from.")
    dtype: Literal["float32", "bfloat16", "float16"] = opt(
        "float32", "Parameter dtype for training and rollout. float32 on CPU.")


@dataclass
class TinyModelConfig:
    """A small random-init model built from a config (used when `model.path` is empty)."""

    arch: Literal["qwen2"] = opt("qwen2", "Architecture family of the tiny model.")
    hidden_size: int = opt(128, "Width of the residual stream.")
    num_layers: int = opt(4, "Number of transformer blocks.")
    num_heads: int = opt(4, "Attention heads (key/value heads are the same number).")
    intermediate_size: int = opt(512, "Hidden width of the MLP.")
    max_positions: int = opt(512, "Longest sequence (prompt + response) the model supports.")


@dataclass
class WorldConfig:
    """The procedural tiny world (`longrl.data.worlds`): verifiable tasks with CoT traces."""

    tasks: list[str] = opt(["add", "sub"], "Task families: add, sub, mul, chain.")
    min_level: int = opt(2, "Lowest difficulty level (digits, or terms for `chain`).")
    max_level: int = opt(3, "Highest difficulty level.")
    train_size: int = opt(20000, "Training prompts drawn for the run's pool.")
    eval_size: int = opt(200, "Held-out prompts, disjoint from anything trained on.")
    direct_fraction: float = opt(
        0.0, "Share of SFT examples that state the answer with no chain of thought (`A: 632`). "
             "A mix lets RL discover that reasoning first pays (the tiny model cannot add in one step).")
    train_file: str = opt("", "Optional JSONL of prompts (`id`, `text`, `answer`) instead of the "
                          "procedural generator.")
    seed: int = opt(0, "Seed of the task generator.")
    trace_style: Literal["concise", "verbose"] = opt(
        "concise", "Chain-of-thought style of the reference traces: `concise` (one line per step) or "
                   "`verbose` (steps re-checked and the answer re-verified, a random number of times "
                   "per example, so correct traces of one problem differ in length; long2short, SPEC §7).")


@dataclass
class RolloutConfig:
    engine: Literal["hf", "vllm"] = opt(
        "hf", "Inference engine: `hf` (transformers, KV cache) or `vllm` (colocated in this "
              "process; needs the `vllm` extra, scripts/setup_vllm.sh).")
    prompts_per_iter: int = opt(32, "Prompts sampled per iteration.")
    samples_per_prompt: int = opt(8, "k: responses sampled per prompt (SPEC §3).")
    temperature: float = opt(1.0, "Sampling temperature; log-probs are taken under it.")
    top_p: float = opt(1.0, "Nucleus sampling threshold (1.0 = off).")
    max_new_tokens: int = opt(128, "Longest response, in tokens.")
    batch_size: int = opt(256, "Sequences generated together by the engine.")
    vllm_kv_cache_gib: float = opt(
        1.0, "vLLM: KV-cache memory in GiB (VLLM_CPU_KVCACHE_SPACE on CPU, whole GiB, at least "
             "1; `kv_cache_memory_bytes` on GPU). 1 GiB holds ~23k tokens of SmolLM2-135M in "
             "float32.")
    vllm_enforce_eager: bool = opt(
        True, "vLLM: run the model eagerly (no torch.compile / CUDA graphs). Starts in seconds; "
              "set false on GPU for speed.")
    vllm_prefix_caching: bool = opt(
        True, "vLLM: reuse the KV cache of shared prefixes (the k samples of a prompt, continued "
              "partial rollouts). Reset after every weight load.")
    vllm_inplace_sync: bool = opt(
        False, "vLLM on CPU: keep plain weight tensors (no oneDNN packing) so a weight sync is an "
               "in-place copy: 1.0-1.2x a plain copy (tiny model, SmolLM2-135M) instead of 5-25x, but "
               "decoding runs at ~0.8x (docs/rollout.md). Worth it only when syncs outweigh rollouts. No effect "
               "on GPU.")
    sync_check_tolerance: float = opt(
        1e-3, "Largest |engine - trainer| log-prob gap on a fixed probe sequence tolerated after a "
              "weight sync (nats). A larger gap raises WeightSyncError: the engine is not sampling "
              "from the trainer's policy. 0 turns the check off. float32 engines agree to ~1e-5.")

    def __post_init__(self) -> None:
        if self.sync_check_tolerance < 0:
            raise ConfigError(f"rollout.sync_check_tolerance is {self.sync_check_tolerance}: give a "
                              "tolerance >= 0 (0 turns the check off)")


@dataclass
class RewardConfig:
    names: list[str] = opt(["world"], "Registered rewards to apply (`longrl.rewards`).")
    weights: list[float] = opt([1.0], "Weight of each reward, in the order of `names`.")
    length_weight: float = opt(0.0, "Weight of the k1.5 length reward (SPEC §4); 0 = off.")
    length_warmup: int = opt(0, "Iterations of plain RL before the length reward starts (SPEC §4).")

    def __post_init__(self) -> None:
        if len(self.names) != len(self.weights):
            raise ConfigError(
                f"reward.names has {len(self.names)} entries but reward.weights has "
                f"{len(self.weights)}: give one weight per reward")


@dataclass
class LossConfig:
    """Online policy mirror descent (SPEC §3)."""

    tau: float = opt(0.1, "τ: strength of the KL term to the sampling policy. Paper gives none.")
    level: Literal["sequence", "token"] = opt(
        "token", "`sequence`: the paper's log-ratio of whole responses; `token`: per-token "
                 "log-ratios averaged over response tokens (ours).")
    baseline: Literal["mean", "logmeanexp"] = opt(
        "mean", "Estimate of τ log Z: mean reward of the k samples (paper) or τ log mean exp(r/τ).")


@dataclass
class TrainConfig:
    lr: float = opt(1e-4, "AdamW learning rate.")
    weight_decay: float = opt(0.0, "AdamW weight decay.")
    betas: list[float] = opt([0.9, 0.999], "AdamW betas.")
    grad_clip: float = opt(1.0, "Max global gradient norm (0 = off).")
    mini_batch_size: int = opt(64, "Sequences per optimizer step.")
    epochs: int = opt(1, "Passes over the iteration's samples (steps = epochs * N / mini_batch).")
    row_tokens: int = opt(2048, "Tokens per packed row in the forward pass.")
    micro_batch_rows: int = opt(0, "Rows per forward/backward (gradient accumulation); 0 = all.")
    max_tokens_per_micro_batch: int = opt(
        0, "Token budget of one forward/backward: packed rows are grouped so that rows x longest "
           "row (padding included) stays within it; a longer single row goes alone. 0 = off "
           "(micro_batch_rows decides). On one GPU, e.g. 32768 with row_tokens <= that.")
    device: str = opt("auto", "Where the trainer runs: auto (CUDA when available, else CPU), cpu, "
                      "cuda or cuda:N. The engine shares it (colocated).")
    gradient_checkpointing: bool = opt(
        False, "Recompute each decoder layer's activations in backward instead of keeping them "
               "(transformers' gradient_checkpointing_enable): ~1/3 more compute, activation memory "
               "of one layer instead of all. On for long contexts.")
    logprob_chunk_tokens: int = opt(
        1024, "Tokens per chunk through the LM head when computing log-probs (longrl.logprobs): "
              "the largest logits tensor is chunk x vocabulary float32 (1024 x 152k = 0.6 GB). "
              "0 = the plain path through the full [B, T, V] logits.")
    reset_optimizer: bool = opt(True, "Reset AdamW state every iteration (SPEC §3).")
    recompute_old_logprobs: bool = opt(
        False, "Recompute π_θi log-probs with the trainer before the first step instead of "
               "using the engine's; the gap is logged as train/old_logprob_max_diff either way.")


@dataclass
class EvalConfig:
    every: int = opt(10, "Evaluate every N iterations (0 = only at start and end).")
    num_prompts: int = opt(200, "Held-out prompts to evaluate (at most world.eval_size).")
    n_samples: int = opt(4, "Samples per prompt; pass@1 is their mean (SPEC §9).")
    temperature: float = opt(1.0, "Sampling temperature for evaluation (0 = greedy).")
    top_p: float = opt(1.0, "Nucleus sampling threshold for evaluation.")
    max_new_tokens: int = opt(128, "Longest evaluated response.")
    pass_k: list[int] = opt([1], "k values of the unbiased pass@k estimate to report.")


@dataclass
class RepetitionConfig:
    """Repetition detection during generation (SPEC §8; `longrl.rollout.repetition`)."""

    enabled: bool = opt(False, "Stop a response early (finish reason `repetition`) when it loops "
                        "or repeats an n-gram. HF engine only.")
    min_period: int = opt(1, "Shortest loop period, in tokens.")
    max_period: int = opt(64, "Longest loop period, in tokens (cost per token grows with it).")
    loop_repeats: int = opt(4, "Copies of a block, back to back, that make a loop.")
    min_loop_tokens: int = opt(24, "A loop must span at least this many tokens (more copies for short periods); "
                               "keeps short natural runs such as `1000` from firing.")
    ngram_size: int = opt(32, "Length of the repeated n-gram signal, in tokens (0 = off).")
    ngram_repeats: int = opt(3, "Occurrences of one n-gram that count as repetition.")
    penalty: float = opt(0.0, "Subtracted from the reward of a response stopped for repetition "
                         "(recorded as reward_info['repetition_penalty']); 0 = stop only.")

    def __post_init__(self) -> None:
        if not 1 <= self.min_period <= self.max_period:
            raise ConfigError("repetition: need 1 <= min_period <= max_period")
        if self.loop_repeats < 2 or (self.ngram_size and self.ngram_repeats < 2):
            raise ConfigError("repetition: loop_repeats and ngram_repeats must be at least 2")


@dataclass
class PartialRolloutConfig:
    """Partial rollouts (SPEC §8, paper §2.6.2; the exact policy is in `longrl.rollout.partial`)."""

    enabled: bool = opt(False, "Cap each trajectory's growth per iteration and continue unfinished "
                        "ones later from the replay buffer. false = one-shot rollouts (as before).")
    token_budget: int = opt(0, "Output tokens reserved per iteration over all requests (each request "
                            "reserves its cap). 0 = prompts_per_iter x samples_per_prompt x segment_tokens.")
    segment_tokens: int = opt(64, "Most tokens one trajectory may grow in one iteration.")
    max_age: int = opt(4, "Iterations a trajectory may stay unfinished, counting the one it started in; "
                       "then `age_policy` applies.")
    age_policy: Literal["drop", "finish"] = opt(
        "drop", "`drop`: discard the trajectory's whole group; `finish`: force-finish it as `length` "
                "(scored as it is, usually 0).")
    max_unfinished: int = opt(1024, "Most unfinished trajectories the buffer keeps; beyond it the "
                              "oldest groups are dropped.")
    segment_loss: Literal["all", "latest_only", "importance"] = opt(
        "importance", "Tokens sampled by older policies in the loss: `all` (weight 1), `latest_only` "
                      "(loss mask 0), `importance` (weight min(c, π_θi/π_old) per token). Measured "
                      "on the default world (docs/rollout.md): held-out pass@1 gain +33 points with "
                      "`importance`, +19 with `all`, +27 with partial rollouts off.")
    importance_cap: float = opt(1.0, "c, the truncation of importance weights (`importance` only).")

    def __post_init__(self) -> None:
        if self.segment_tokens < 1 or self.max_age < 1:
            raise ConfigError("partial: segment_tokens and max_age must be at least 1")
        if self.importance_cap <= 0:
            raise ConfigError("partial: importance_cap must be positive")


@dataclass
class SamplerConfig:
    """Which prompts each iteration trains on (SPEC §5; the exact policies are in `longrl.sampler`)."""

    kind: Literal["uniform", "prioritized"] = opt(
        "uniform", "How prompts are drawn from the current pool: `uniform` (each once per epoch, "
                   "reshuffled) or `prioritized` (p_i ∝ max(1 − s_i, floor), s_i the prompt's success "
                   "rate; paper §2.3.4).")
    curriculum: Literal["none", "warmup_then_hard", "phases"] = opt(
        "none", "Which prompts may be drawn when: `none` (all, always); `warmup_then_hard` (the paper's "
                "Fig. 9: all prompts for `warmup_iterations`, then difficulty >= `hard_threshold` only); "
                "`phases` (the `phase_*` lists). Composes with either `kind`.")
    warmup_iterations: int = opt(20, "`warmup_then_hard`: iterations over the whole pool before the "
                                 "hard-only phase (0 = hard only from the start).")
    hard_threshold: float = opt(0.5, "Difficulty (0 easy .. 1 hard) from which a prompt counts as hard: "
                                "the pool of the hard phase and the `sampler/hard_share` metric.")
    phase_iterations: list[int] = opt([], "`phases`: length of each phase in iterations (>= 1); the last "
                                      "phase lasts until the end of the run, whatever its length.")
    phase_min_difficulty: list[float] = opt([], "`phases`: lowest difficulty each phase admits.")
    phase_max_difficulty: list[float] = opt(
        [], "`phases`: highest difficulty each phase admits. A prompt with no difficulty label is "
            "admitted only by phases spanning the whole [0, 1].")
    phase_tags: list[list[str]] = opt(
        [], "`phases`, optional: per phase, tags of which a prompt needs one (e.g. [[\"level:2\"], []]); "
            "empty = no tag filter.")
    floor: float = opt(0.05, "`prioritized`: ε, the least weight of a prompt, so solved prompts are "
                       "still revisited (ours; the paper has none). In (0, 1].")
    prior: float = opt(0.5, "`prioritized`: success rate assumed for a prompt never sampled (ours).")
    ema: float = opt(0.0, "`prioritized`: 0 = s_i is the mean correctness over all its responses so "
                     "far; α in (0, 1] = moving average s_i ← (1 − α) s_i + α × this iteration's share.")

    def __post_init__(self) -> None:
        if self.warmup_iterations < 0 or not 0 <= self.hard_threshold <= 1:
            raise ConfigError("sampler: need warmup_iterations >= 0 and 0 <= hard_threshold <= 1")
        if not 0 < self.floor <= 1 or not 0 <= self.prior <= 1 or not 0 <= self.ema <= 1:
            raise ConfigError(f"sampler: need 0 < floor <= 1, 0 <= prior <= 1, 0 <= ema <= 1 (got floor="
                              f"{self.floor}, prior={self.prior}, ema={self.ema}); a floor of 0 would never "
                              "draw a solved prompt again: use a small value such as 0.01")
        lists = {"phase_iterations": self.phase_iterations, "phase_min_difficulty": self.phase_min_difficulty,
                 "phase_max_difficulty": self.phase_max_difficulty, "phase_tags": self.phase_tags}
        if self.curriculum != "phases":
            given = [name for name, values in lists.items() if values]
            if given:
                raise ConfigError(f"sampler.{given[0]} is set but sampler.curriculum is "
                                  f"{self.curriculum!r}: set curriculum = \"phases\" or remove it")
            return
        n = len(self.phase_iterations)
        if n == 0:
            raise ConfigError("sampler.curriculum is \"phases\" but sampler.phase_iterations is empty: "
                              "give one length per phase")
        for name, values in lists.items():
            if len(values) != n and not (name == "phase_tags" and not values):
                raise ConfigError(f"sampler.{name} has {len(values)} entries but sampler.phase_iterations "
                                  f"has {n}: give one per phase")
        for j, (length, lo, hi) in enumerate(zip(self.phase_iterations, self.phase_min_difficulty,
                                                 self.phase_max_difficulty)):
            if length < 1 and j < n - 1:
                raise ConfigError(f"sampler.phase_iterations[{j}] is {length}: every phase but the last "
                                  "needs at least 1 iteration")
            if not 0 <= lo <= hi <= 1:
                raise ConfigError(f"sampler phase {j}: need 0 <= phase_min_difficulty <= "
                                  f"phase_max_difficulty <= 1, got [{lo}, {hi}]")


@dataclass
class DataConfig:
    """Prompt sources of an RL run (`longrl.data.sources`; spec strings in docs/data.md)."""

    train: list[str] = opt([], "Source specs of the training pool, concatenated (`jsonl:PATH`, "
                           "`parquet:PATH`, `csv:PATH`, `hf:DIR?split=train`, "
                           "`reasoning_gym:NAME?size=N`, `humaneval`, `champ`, `world`). "
                           "Empty = the tiny world (or world.train_file).")
    eval: list[str] = opt([], "Source specs of the held-out prompts. Empty = the world's held-out split.")
    on_error: Literal["raise", "skip"] = opt(
        "raise", "A malformed row: `raise` stops with an error naming file, line and field; `skip` "
                 "reports it on stderr, goes on, and prints the count of skipped rows.")


@dataclass
class RunConfig:
    """An RL run (`longrl train`)."""

    name: str = opt("rl", "Run name: outputs go to `<out_dir>/<name>/`.")
    out_dir: str = opt("runs", "Parent directory of run directories.")
    iterations: int = opt(40, "RL iterations (rollout phase + training phase each).")
    seed: int = opt(0, "Seed for sampling, data order and initialisation.")
    threads: int = opt(0, "torch intra-op threads (0 = torch default).")
    checkpoint_every: int = opt(0, "Save a resumable checkpoint every N iterations (0 = at end).")
    log_samples: int = opt(4, "Full trajectories written to samples/ per iteration.")
    model: ModelConfig = field(default_factory=ModelConfig)
    world: WorldConfig = field(default_factory=WorldConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    repetition: RepetitionConfig = field(default_factory=RepetitionConfig)
    partial: PartialRolloutConfig = field(default_factory=PartialRolloutConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)


@dataclass
class SFTConfig:
    """Supervised warm-up on verified traces (`longrl sft`, SPEC §2)."""

    name: str = opt("sft", "Run name: outputs go to `<out_dir>/<name>/`.")
    out_dir: str = opt("runs", "Parent directory of run directories.")
    seed: int = opt(0, "Seed for data order and initialisation.")
    threads: int = opt(0, "torch intra-op threads (0 = torch default).")
    steps: int = opt(300, "Optimizer steps.")
    lr: float = opt(3e-3, "Peak AdamW learning rate (linear warm-up, cosine decay).")
    warmup_steps: int = opt(20, "Linear warm-up steps.")
    weight_decay: float = opt(0.01, "AdamW weight decay.")
    rows_per_step: int = opt(8, "Packed rows per optimizer step.")
    row_tokens: int = opt(1024, "Tokens per packed row; several examples share a row.")
    log_every: int = opt(25, "Log the loss every N steps.")
    data_file: str = opt("", "Optional JSONL of `prompt`/`response` rows to train on instead of the "
                         "world's traces (e.g. written by `longrl shortest-rs`); evaluation still uses "
                         "the world's held-out split.")
    model: ModelConfig = field(default_factory=ModelConfig)
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    world: WorldConfig = field(default_factory=WorldConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


@dataclass
class L2SSampleConfig:
    """n responses per training prompt from the long model (long2short, SPEC §7)."""

    num_prompts: int = opt(512, "Training prompts to sample (drawn from the world's training split).")
    n: int = opt(8, "Responses per prompt (paper: 8).")
    temperature: float = opt(1.0, "Sampling temperature.")
    top_p: float = opt(1.0, "Nucleus sampling threshold (1.0 = off).")
    max_new_tokens: int = opt(128, "Longest response; a truncated response never counts as correct.")
    batch_size: int = opt(256, "Sequences generated together.")
    samples_file: str = opt("", "Reuse the `samples.jsonl` of an earlier shortest-rs or DPO run "
                            "instead of sampling anew (same model, so the same distribution).")

    def __post_init__(self) -> None:
        if self.n < 2:
            raise ConfigError(f"sample.n is {self.n}: choosing the shortest needs at least 2 samples")


@dataclass
class ShortestRSConfig:
    """Shortest rejection sampling (`longrl shortest-rs`, SPEC §7): SFT on the shortest correct sample."""

    name: str = opt("shortest_rs", "Run name: outputs go to `<out_dir>/<name>/`.")
    out_dir: str = opt("runs", "Parent directory of run directories.")
    seed: int = opt(0, "Seed for sampling and data order.")
    threads: int = opt(0, "torch intra-op threads (0 = torch default).")
    steps: int = opt(150, "SFT optimizer steps on the kept samples (as `longrl sft`).")
    lr: float = opt(1e-3, "Peak SFT learning rate (linear warm-up, cosine decay).")
    warmup_steps: int = opt(10, "SFT linear warm-up steps.")
    rows_per_step: int = opt(16, "Packed rows per SFT step.")
    row_tokens: int = opt(256, "Tokens per packed row.")
    model: ModelConfig = field(default_factory=ModelConfig)
    world: WorldConfig = field(default_factory=WorldConfig)
    sample: L2SSampleConfig = field(default_factory=L2SSampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


@dataclass
class DPOConfig:
    """DPO towards short answers (`longrl dpo`, SPEC §7): pairs by the k1.5 rule, frozen reference."""

    name: str = opt("dpo", "Run name: outputs go to `<out_dir>/<name>/`.")
    out_dir: str = opt("runs", "Parent directory of run directories.")
    seed: int = opt(0, "Seed for sampling and data order.")
    threads: int = opt(0, "torch intra-op threads (0 = torch default).")
    beta: float = opt(0.1, "β of the DPO loss: how far from the reference the policy may move (DPO paper: 0.1).")
    length_ratio: float = opt(1.5, "A correct response is a negative when longer than this times the "
                              "shortest correct one (paper: 1.5).")
    steps: int = opt(100, "Optimizer steps.")
    lr: float = opt(1e-5, "AdamW learning rate (linear warm-up, then constant). Measured on the tiny "
                    "world (docs/long2short.md): 3e-5 and above collapse the policy within 50 steps.")
    warmup_steps: int = opt(10, "Linear warm-up steps.")
    pairs_per_step: int = opt(32, "Preference pairs per optimizer step.")
    row_tokens: int = opt(512, "Tokens per packed row in the forward pass.")
    log_every: int = opt(10, "Log the loss every N steps.")
    model: ModelConfig = field(default_factory=ModelConfig)
    world: WorldConfig = field(default_factory=WorldConfig)
    sample: L2SSampleConfig = field(default_factory=L2SSampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise ConfigError(f"beta is {self.beta}: DPO needs β > 0 (0.1 is the usual value)")
        if self.length_ratio < 1:
            raise ConfigError(f"length_ratio is {self.length_ratio}: give a ratio >= 1 (paper: 1.5)")


CURATE_STEPS = ("exact_dedupe", "near_dedupe", "decontaminate", "exclude_guessable", "easy_to_hack",
                "pass_rate", "balance")


@dataclass
class CurateConfig:
    """Offline curation of an RL prompt set (`longrl curate`, SPEC §1; `longrl.data.curate`)."""

    name: str = opt("curate", "Output name: curated.jsonl and the report go to `<out_dir>/<name>/`.")
    out_dir: str = opt("runs", "Parent directory of the output directory.")
    sources: list[str] = opt([], "Prompt sources to curate, as source specs (`jsonl:PATH`, "
                             "`reasoning_gym:leg_counting?size=50`, `champ`, ...; docs/data.md).")
    eval_sources: list[str] = opt([], "Evaluation sets the training prompts are decontaminated against.")
    on_error: Literal["raise", "skip"] = opt("raise", "A malformed source row: `raise` stops, `skip` "
                                             "reports it on stderr and goes on.")
    limit: int = opt(0, "Curate only the first N loaded prompts (0 = all).")
    steps: list[str] = opt(list(CURATE_STEPS), "Steps to run, in this order. `easy_to_hack` and "
                           "`pass_rate` sample from model.path; the others are text rules.")
    seed: int = opt(0, "Seed of the engine's sampling and of the balance draw.")
    threads: int = opt(0, "torch intra-op threads (0 = torch default).")
    near_threshold: float = opt(0.8, "Near duplicates: estimated Jaccard similarity of shingle sets at "
                                "or above which a later prompt is dropped.")
    near_num_perm: int = opt(128, "Near duplicates: MinHash permutations (more = tighter estimate).")
    near_shingle: Literal["word", "char"] = opt("word", "Near duplicates: shingles of words or characters.")
    near_shingle_size: int = opt(3, "Near duplicates: words (or characters) per shingle; 3 words or 5 chars suit.")
    near_same_numbers: bool = opt(True, "Near duplicates must also contain the same numbers in order: "
                                  "templated problems that differ only in numbers are kept.")
    ngram: int = opt(13, "Decontamination: n of the word n-grams shared with an eval prompt (13 as in GPT-3).")
    common_share: float = opt(
        0.1, "Boilerplate: text in more than this share of the prompts (and in more than 3) - a "
             "template, a standing instruction - is left out of near-duplicate similarity, and n-grams "
             "common to an eval set are not contamination. 1.0 = off.")
    guessable_rules: list[str] = opt(["multiple_choice", "true_false", "proof"],
                                     "Guessable question types to exclude (SPEC §1).")
    reward_rules: list[str] = opt(
        ["reasoning_gym=reasoning_gym", "champ=math", "humaneval=code", "world=world"],
        "`KEY=REWARD`: a prompt whose source, source family (before ':') or tag is KEY is judged by "
        "REWARD, first match wins; a loader's meta['reward'] takes precedence.")
    default_reward: str = opt("", "Reward for prompts no rule matches ('' = such a prompt is an error).")
    correct_threshold: float = opt(1.0, "A sample is correct when its reward reaches this.")
    guesses: int = opt(8, "Easy-to-hack: answers sampled without a chain of thought; any correct one "
                       "drops the prompt (SPEC §1: 8).")
    hack_template: str = opt("{question}\n\nReply with the final answer only, without any explanation.",
                             "Easy-to-hack: the user message; `{question}` is replaced by the prompt text.")
    hack_formats: list[str] = opt(
        ["world=A: {guess}", "math=\\boxed{{guess}}", "reasoning_gym=<answer>{guess}</answer>"],
        "Easy-to-hack: `REWARD=FORMAT`, the answer format that reward reads; a guess is forced to "
        "start with the text before `{guess}`, and its first line fills `{guess}`.")
    hack_max_new_tokens: int = opt(24, "Easy-to-hack: longest guess, in tokens (short: no room to reason).")
    hack_temperature: float = opt(1.0, "Easy-to-hack: sampling temperature of the guesses.")
    n_samples: int = opt(10, "Pass rate: samples per prompt at rollout.temperature (SPEC §1: 10 at 1.0).")
    bucket_edges: list[float] = opt([0.3, 0.7], "Difficulty d = 1 - pass rate is easy if d < first "
                                    "edge, medium if d < second, else hard.")
    drop_solved: bool = opt(True, "Drop prompts whose every sample was correct (pass rate 1.0).")
    min_difficulty: float = opt(0.0, "Keep prompts with difficulty >= this (after the pass rate).")
    max_difficulty: float = opt(1.0, "Keep prompts with difficulty <= this (1.0 keeps never-solved ones).")
    balance_tag_prefix: str = opt("", "Balance: a prompt's group is its first tag starting with this.")
    max_per_tag: int = opt(0, "Balance: most prompts kept per group (0 = no cap).")
    target_shares: list[str] = opt([], "Balance: `TAG=WEIGHT` relative shares among the named groups.")
    report_examples: int = opt(3, "Examples shown per drop reason in the report.")
    chunk_prompts: int = opt(16, "Prompts sent to the engine at a time (progress is reported per chunk).")
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
        if not 0 < self.near_threshold <= 1:
            raise ConfigError(f"near_threshold is {self.near_threshold}: give a similarity in (0, 1]")
        if self.ngram < 1 or self.n_samples < 1 or self.guesses < 1 or self.near_shingle_size < 1:
            raise ConfigError("ngram, n_samples, guesses and near_shingle_size must be at least 1")
        if len(self.bucket_edges) != 2 or not 0 <= self.bucket_edges[0] <= self.bucket_edges[1] <= 1:
            raise ConfigError(f"bucket_edges is {self.bucket_edges}: give two edges 0 <= a <= b <= 1")
        if not 0 <= self.min_difficulty <= self.max_difficulty <= 1:
            raise ConfigError("need 0 <= min_difficulty <= max_difficulty <= 1")
        if "{question}" not in self.hack_template:
            raise ConfigError("hack_template must contain `{question}` (where the prompt text goes)")
        for item in self.hack_formats:
            if "{guess}" not in item:
                raise ConfigError(f"hack_formats: {item!r} has no `{{guess}}` (where the guess goes)")
        for name in ("reward_rules", "hack_formats", "target_shares"):
            for item in getattr(self, name):
                if "=" not in item or not item.split("=", 1)[0].strip():
                    raise ConfigError(f"{name}: entry {item!r} must look like KEY=VALUE")
        for item in self.target_shares:
            try:
                float(item.split("=", 1)[1])
            except ValueError:
                raise ConfigError(f"target_shares: weight of {item!r} is not a number") from None


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def _line_of(text: str, section: str | None, key: str) -> int | None:
    """Best-effort line number of `key` (inside `[section]` when given) in a TOML text."""
    current = None
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        header = re.match(r"^\[([^\[\]]+)\]", stripped)
        if header:
            current = header.group(1).strip()
            if current == (f"{section}.{key}" if section else key):  # the key is a table
                return number
            continue
        if current == section and re.match(rf"^{re.escape(key)}\s*=", stripped):
            return number
    return None


@dataclass
class _Source:
    """Where a value came from, for error messages."""

    path: str | None = None
    text: str = ""
    overrides: set[str] = field(default_factory=set)

    def where(self, dotted: str) -> str:
        if dotted in self.overrides:
            return f"command-line override {dotted!r}"
        if self.path is None:
            return f"key {dotted!r}"
        section, _, key = dotted.rpartition(".")
        line = _line_of(self.text, section or None, key)
        return f"{self.path}" + (f", line {line}" if line else "") + f": key {dotted!r}"


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list[{_type_name(typing.get_args(tp)[0])}]"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any) -> Any:
    """Return `value` as type `tp`, or raise TypeError. Ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise TypeError(f"must be one of {_type_name(tp)}, got {value!r}")
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option)
            except TypeError:
                continue
        raise TypeError(f"must be {_type_name(tp)}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
        raise TypeError("must be empty")
    if origin is list:
        if not isinstance(value, list):
            raise TypeError(f"must be a list ({_type_name(tp)}), got {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item) for v in value]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is bool and not isinstance(value, bool):
        raise TypeError(f"must be true or false, got {value!r}")
    if tp is int and isinstance(value, bool):
        raise TypeError(f"must be an integer, got {value!r}")
    if isinstance(value, tp):
        return value
    raise TypeError(f"must be {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _nearest(key: str, options: list[str]) -> str | None:
    """The valid key the user most likely meant: a near spelling, initials, or a containment."""
    close = difflib.get_close_matches(key, options, n=1, cutoff=0.6)
    if close:
        return close[0]
    initials = "".join(word[0] for word in key.split("_") if word)
    for option in options:
        if option == initials or (len(option) > 2 and (option in key or key in option)):
            return option
    close = difflib.get_close_matches(key, options, n=1, cutoff=0.4)
    return close[0] if close else None


def _build(cls: type, values: dict[str, Any], source: _Source, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            close = _nearest(key, list(fields))
            hint = f"; did you mean {prefix + close!r}?" if close else ""
            valid = ", ".join(sorted(fields))
            raise ConfigError(f"{source.where(dotted)}: unknown key{hint} (valid here: {valid})")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{source.where(dotted)}: must be a [{dotted}] section")
            kwargs[key] = _build(tp, value, source, prefix=f"{dotted}.")
            continue
        try:
            kwargs[key] = _coerce(value, tp)
        except TypeError as exc:
            raise ConfigError(f"{source.where(dotted)}: {exc}") from None
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        where = source.path or "config"
        raise ConfigError(f"{where}: {exc}") from None


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value")
    dotted, raw = item.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare string such as `model.path=runs/sft/final`
    return dotted.strip().split("."), value


def load_config(cls: type, path: str | Path | None = None, overrides: list[str] = ()) -> Any:
    """Build config `cls` from an optional TOML file and `a.b=value` overrides, strictly."""
    source = _Source()
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        source.path, source.text = str(path), path.read_text()
        try:
            values = tomllib.loads(source.text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    for item in overrides:
        keys, value = _parse_override(item)
        source.overrides.add(".".join(keys))
        node = values
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {key!r} is not a section")
        node[keys[-1]] = value
    return _build(cls, values, source)


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def dump_toml(config: Any) -> str:
    """Write a config back as TOML (scalars first, then one table per nested section)."""

    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        return repr(v)

    data = config_to_dict(config)
    lines = [f"{k} = {scalar(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for k, v in data.items():
        if isinstance(v, dict):
            lines += ["", f"[{k}]"] + [f"{kk} = {scalar(vv)}" for kk, vv in v.items()]
    return "\n".join(lines) + "\n"


def describe(cls: type, prefix: str = "") -> list[str]:
    """One line per field: `section.key  (type, default)  help` — the body of `--help`."""
    hints = typing.get_type_hints(cls)
    lines = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            lines.append("")
            lines += describe(tp, prefix=f"{prefix}{f.name}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        lines.append(f"  {prefix}{f.name} ({_type_name(tp)}, default {default!r})")
        lines.append(f"      {f.metadata.get('help', '')}")
    return lines
