"""Configs of the jobs around RL: the SFT warm-up (SPEC §2) and long2short (SPEC §7)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from longrl.config.loader import ConfigError, opt
from longrl.config.run import DataConfig, EvalConfig, ModelConfig, RewardConfig, TinyModelConfig, WorldConfig


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
    model: ModelConfig = field(default_factory=ModelConfig)
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    world: WorldConfig = field(default_factory=WorldConfig)
    data: DataConfig = field(default_factory=DataConfig)  # train: examples with responses (sft.py)
    reward: RewardConfig = field(default_factory=RewardConfig)  # scores the evaluation on data.eval
    eval: EvalConfig = field(default_factory=EvalConfig)


@dataclass
class L2SSampleConfig:
    """n responses per training prompt from the long model (long2short, SPEC §7)."""

    num_prompts: int = opt(512, "Prompts to sample, drawn at random (seeded) from `data.train`.")
    n: int = opt(8, "Responses per prompt (paper: 8).")
    temperature: float = opt(1.0, "Sampling temperature.")
    top_p: float = opt(1.0, "Nucleus sampling threshold (1.0 = off).")
    max_new_tokens: int = opt(128, "Longest response; a truncated response never counts as correct.")
    batch_size: int = opt(256, "Sequences generated together.")
    samples_file: str = opt("", "Reuse the `samples.jsonl` of an earlier shortest-rs or DPO run "
                            "instead of sampling anew (same model, so the same distribution).")
    instruction: str = opt("", "Text put before each prompt while sampling (e.g. 'Think step by step, "
                           "check your work, then answer.'); the SFT rows keep the prompt without it.")

    def __post_init__(self) -> None:
        if self.n < 2:
            raise ConfigError(f"sample.n is {self.n}: choosing the shortest needs at least 2 samples")


@dataclass
class ShortestRSConfig:
    """Rejection-sampled SFT: sample n per prompt, keep verified-correct samples by `keep`, fine-tune
    on them (`longrl rs-sft`, the long-CoT warm-up of SPEC §2; `longrl shortest-rs` is keep =
    shortest, long2short of SPEC §7)."""

    name: str = opt("shortest_rs", "Run name: outputs go to `<out_dir>/<name>/`.")
    keep: Literal["shortest", "longest", "all", "reflection"] = opt(
        "shortest", "Which correct samples of a prompt to train on: the shortest (long2short), the "
                    "longest, all of them (duplicates once), or those whose text shows reflection "
                    "(one of `reflection_markers`).")
    reflection_markers: list[str] = opt(
        ["wait", "check", "verify", "let me re", "double-check", "mistake"],
        "keep = reflection: words (case-insensitive) that mark a response as reflecting on its work.")
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
    data: DataConfig = field(default_factory=DataConfig)  # train: prompts to sample; eval: held out
    reward: RewardConfig = field(default_factory=RewardConfig)  # judges samples and evaluation
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
    data: DataConfig = field(default_factory=DataConfig)  # train: prompts to sample; eval: held out
    reward: RewardConfig = field(default_factory=RewardConfig)  # judges samples and evaluation
    sample: L2SSampleConfig = field(default_factory=L2SSampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise ConfigError(f"beta is {self.beta}: DPO needs β > 0 (0.1 is the usual value)")
        if self.length_ratio < 1:
            raise ConfigError(f"length_ratio is {self.length_ratio}: give a ratio >= 1 (paper: 1.5)")



@dataclass
class RMTrainConfig:
    """A classic reward model trained on labelled responses (`longrl rm train`, SPEC §6)."""

    name: str = opt("rm", "Run name: outputs go to `<out_dir>/<name>/` (the model in `final/`).")
    out_dir: str = opt("runs", "Parent directory of run directories.")
    seed: int = opt(0, "Seed for the held-out split, data order and the new head.")
    data: str = opt("", "JSONL of {prompt, reference?, response, label 0/1} rows to train on.")
    eval_data: str = opt("", "JSONL of held-out rows ('' = hold out `eval_fraction` of `data`).")
    eval_fraction: float = opt(0.2, "Share of `data` held out when `eval_data` is not given.")
    epochs: int = opt(3, "Passes over the training rows.")
    batch_size: int = opt(16, "Rows per optimizer step.")
    lr: float = opt(1e-4, "AdamW learning rate.")
    weight_decay: float = opt(0.0, "AdamW weight decay.")
    max_tokens: int = opt(4096, "Longer inputs keep their last max_tokens tokens.")
    device: str = opt("auto", "auto (CUDA when present), cpu, cuda, cuda:N.")
    model: ModelConfig = field(default_factory=ModelConfig)  # path: a causal LM (new head) or an RM

    def __post_init__(self) -> None:
        if not 0 < self.eval_fraction < 1:
            raise ConfigError(f"eval_fraction is {self.eval_fraction}: choose a share between 0 and 1")


@dataclass
class RMLabelConfig:
    """Responses of a policy labelled by a verifier: the rows `longrl rm train` and
    `longrl rm train-judge` read (`longrl rm label`)."""

    out: str = opt("labelled.jsonl", "JSONL to write: one {prompt, reference, response, label} row per response.")
    split: Literal["train", "eval"] = opt("train", "Prompts to sample: those of `data.train` or of `data.eval`.")
    seed: int = opt(0, "Seed for the choice of prompts and for sampling.")
    threads: int = opt(0, "torch intra-op threads (0 = torch default).")
    model: ModelConfig = field(default_factory=ModelConfig)  # the policy whose responses are labelled
    world: WorldConfig = field(default_factory=WorldConfig)
    data: DataConfig = field(default_factory=DataConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)  # the verifier: label 1 when it gives 1.0
    sample: L2SSampleConfig = field(default_factory=L2SSampleConfig)


@dataclass
class JudgeTrainConfig:
    """A chain-of-thought judge fine-tuned on verdict traces of labelled responses
    (`longrl rm train-judge`, SPEC §6; the traces and their SFT in rewards/judge.py)."""

    name: str = opt("judge", "Run name: outputs go to `<out_dir>/<name>/` (the judge in `final/`).")
    out_dir: str = opt("runs", "Parent directory of run directories.")
    seed: int = opt(0, "Seed for the held-out split and data order.")
    threads: int = opt(0, "torch intra-op threads (0 = torch default).")
    data: str = opt("", "JSONL of {prompt, reference?, response, label 0/1} rows (as `longrl rm train`).")
    eval_data: str = opt("", "JSONL of held-out rows ('' = hold out `eval_fraction` of `data`).")
    eval_fraction: float = opt(0.2, "Share of `data` held out when `eval_data` is not given.")
    template: str = opt("", "A file with the judge prompt ('' = the built-in one, rewards/judge.py).")
    steps: int = opt(300, "SFT optimizer steps.")
    lr: float = opt(1e-3, "Peak SFT learning rate (linear warm-up, cosine decay).")
    warmup_steps: int = opt(20, "SFT linear warm-up steps.")
    rows_per_step: int = opt(8, "Packed rows per SFT step.")
    row_tokens: int = opt(1024, "Tokens per packed row.")
    log_every: int = opt(25, "Log the loss every N steps.")
    max_new_tokens: int = opt(256, "Longest judge output when measuring held-out accuracy (greedy).")
    model: ModelConfig = field(default_factory=ModelConfig)  # the judge to start from (a causal LM)

    def __post_init__(self) -> None:
        if not 0 < self.eval_fraction < 1:
            raise ConfigError(f"eval_fraction is {self.eval_fraction}: choose a share between 0 and 1")


@dataclass
class RejectionSFTConfig(ShortestRSConfig):
    """`longrl rs-sft`: the long-CoT warm-up by rejection sampling (SPEC §2)."""

    name: str = opt("rs_sft", "Run name: outputs go to `<out_dir>/<name>/`.")
    keep: Literal["shortest", "longest", "all", "reflection"] = opt(
        "all", "Which correct samples of a prompt to train on: the shortest (long2short), the longest, "
               "all of them (duplicates once), or those whose text shows reflection (one of "
               "`reflection_markers`).")
