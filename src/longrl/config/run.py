"""The RL run's component configs (`longrl train`), composed into `RunConfig`.

Each field documents itself (`opt(default, help)`); `longrl train --help` prints them.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from longrl.config.loader import ConfigError, opt


@dataclass
class ModelConfig:
    path: str = opt("", "Hugging Face model directory (weights + tokenizer) to start from.")
    dtype: Literal["float32", "bfloat16", "float16"] = opt(
        "float32", "Parameter dtype for training and rollout. float32 on CPU.")
    lora_rank: int = opt(0, "LoRA: train low-rank adapters of this rank instead of all weights (0 = full "
                         "fine-tuning; needs `pip install peft`). Engines get the merged weights.")
    lora_alpha: float = opt(16.0, "LoRA: the adapters' output is scaled by lora_alpha / lora_rank.")
    lora_dropout: float = opt(0.0, "LoRA: dropout on the adapters' input.")
    lora_target_modules: list[str] = opt(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "LoRA: names of the linear layers that get adapters (the attention and MLP projections of "
        "Llama/Qwen-style models).")

    def __post_init__(self) -> None:
        if self.lora_rank < 0:
            raise ConfigError(f"model.lora_rank is {self.lora_rank}: 0 (off) or a positive rank")


@dataclass
class TinyModelConfig:
    """A small random-init model built from a config (used when `model.path` is empty)."""

    arch: Literal["qwen2"] = opt("qwen2", "Architecture family of the tiny model.")
    hidden_size: int = opt(128, "Width of the residual stream.")
    num_layers: int = opt(4, "Number of transformer blocks.")
    num_heads: int = opt(4, "Attention heads (key/value heads are the same number).")
    intermediate_size: int = opt(512, "Hidden width of the MLP.")
    max_positions: int = opt(512, "Longest sequence (prompt + response) the model supports.")
    vision: bool = opt(False, "Build a tiny vision-language model instead: a Qwen2-VL whose text part has the "
                       "shape above, plus a vision tower and its processor (`longrl.vision`), for prompts with "
                       "images (the world's add_img, count_img, text_img; docs/vision.md).")
    vision_depth: int = opt(1, "vision: transformer blocks of the vision tower.")
    vision_dim: int = opt(64, "vision: width of the vision tower. It sees 14x14-pixel patches, 2x2 of them merged "
                          "into one token of the text part; 64 reads the world's digits (configs/vision_sft.toml).")


@dataclass
class WorldConfig:
    """The procedural tiny world (`longrl.data.worlds`): verifiable tasks with CoT traces."""

    tasks: list[str] = opt(["add", "sub"], "Task families: add, sub, mul, chain, rep (s + a*n by n additions; "
                           "1,000+ token traces at levels 64+, configs/long_rl.toml), count; with an image "
                           "(a vision-language model, docs/vision.md): add_img, count_img, text_img.")
    min_level: int = opt(2, "Lowest difficulty level (digits, or terms for `chain`).")
    max_level: int = opt(3, "Highest difficulty level.")
    train_size: int = opt(20000, "Training prompts drawn for the run's pool.")
    eval_size: int = opt(200, "Held-out prompts, disjoint from anything trained on.")
    direct_fraction: float = opt(
        0.0, "Share of SFT examples that state the answer with no chain of thought (`A: 632`). "
             "A mix lets RL discover that reasoning first pays (the tiny model cannot add in one step).")
    seed: int = opt(0, "Seed of the task generator.")
    trace_style: Literal["concise", "verbose"] = opt(
        "concise", "Chain-of-thought style of the reference traces: `concise` (one line per step) or "
                   "`verbose` (steps re-checked and the answer re-verified, a random number of times "
                   "per example, so correct traces of one problem differ in length; long2short, SPEC §7).")

    def __post_init__(self) -> None:
        from longrl.data.worlds import TASKS  # lazily: worlds.py imports this module

        for task in self.tasks:
            if task not in TASKS:
                close = difflib.get_close_matches(task, TASKS, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"world.tasks: unknown task {task!r}{hint} (tasks: {', '.join(TASKS)})")
        if not 1 <= self.min_level <= self.max_level:
            raise ConfigError(f"world: need 1 <= min_level <= max_level, got {self.min_level} and {self.max_level}")


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
    vllm_request_seeds: bool = opt(
        False, "vLLM: seed every request from the engine's own generator, which checkpoints save, so a "
               "resumed run samples exactly what the uninterrupted one did (same batches, same hardware). "
               "Off: vLLM is seeded once and a resume continues with fresh randomness; per-request "
               "generators take a slower path in vLLM's sampler.")
    vllm_tensor_parallel_size: int = opt(
        1, "vLLM: shard each engine's model over this many devices (tensor parallelism: GPUs, or on CPU "
           "processes bound to disjoint cores). Above 1 vLLM's workers run in processes of their own, so a "
           "weight push is copied to each of them (no vllm_inplace_sync). In cluster mode each rollout actor "
           "asks Ray for this many GPUs (cluster.gpus_per_rollout_worker).")
    sync_check_tolerance: float = opt(
        1e-3, "Largest |engine - trainer| log-prob gap on a fixed probe sequence tolerated after a "
              "weight sync (nats). A larger gap raises WeightSyncError: the engine is not sampling "
              "from the trainer's policy. 0 turns the check off. float32 engines agree to ~1e-5.")

    def __post_init__(self) -> None:
        if self.sync_check_tolerance < 0:
            raise ConfigError(f"rollout.sync_check_tolerance is {self.sync_check_tolerance}: give a "
                              "tolerance >= 0 (0 turns the check off)")
        tp = self.vllm_tensor_parallel_size
        if tp < 1:
            raise ConfigError(f"rollout.vllm_tensor_parallel_size is {tp}: give 1 (no sharding) or more")
        if tp > 1 and self.engine != "vllm":
            raise ConfigError(f"rollout.vllm_tensor_parallel_size is {tp} with rollout.engine = "
                              f"{self.engine!r}: tensor parallelism needs rollout.engine = \"vllm\"")
        if tp > 1 and self.vllm_inplace_sync:
            raise ConfigError(f"rollout.vllm_inplace_sync with rollout.vllm_tensor_parallel_size = {tp}: the "
                              "in-place push writes into the engine's tensors in this process, and a sharded "
                              "engine keeps them in its worker processes; set one of them off")


@dataclass
class RewardConfig:
    """Rewards of a run (SPEC §6; `longrl.rewards.registry`, docs/rewards.md).

    Options of a reward go in a table of its own name: `[reward.math]` then `timeout_s = 5`, or
    `[reward.code]` then `backend = "http"` and `url = "http://127.0.0.1:8080"`. They are checked
    against the reward's options when the config loads.
    """

    __tables__ = "options"

    names: list[str] = opt(["world"], "Rewards to apply: built-in names (`world`, `math`, `code`, "
                           "`reasoning_gym`) or user functions as `FILE.py:FUNCTION` or "
                           "`package.module:FUNCTION` (docs/rewards.md).")
    weights: list[float] = opt([1.0], "Weight of each reward, in the order of `names`.")
    length_weight: float = opt(0.0, "Weight of the k1.5 length reward (SPEC §4); 0 = off.")
    length_warmup: int = opt(0, "Iterations of plain RL before the length reward starts (SPEC §4).")
    options: dict[str, dict[str, Any]] = opt(
        {}, "Options of reward <name>, as a `[reward.<name>]` table (e.g. `[reward.math] timeout_s = 5`).")

    def __post_init__(self) -> None:
        if len(self.names) != len(self.weights):
            raise ConfigError(
                f"reward.names has {len(self.names)} entries but reward.weights has "
                f"{len(self.weights)}: give one weight per reward")
        if len(set(self.names)) != len(self.names):
            raise ConfigError(f"reward.names {self.names} names a reward twice: list each once")

    def check_given(self, given: set[str], where: Callable[[str], str]) -> None:
        from longrl.rewards.registry import check_reward

        for name, options in self.options.items():
            if name not in self.names:
                raise ConfigError(f"{where(name)}: options for reward {name!r}, which is not in reward.names "
                                  f"{self.names}: add it there or remove the table")
        for name in self.names:
            check_reward(name, self.options.get(name, {}), where)


@dataclass
class LossConfig:
    """Online policy mirror descent (SPEC §3), or a baseline for ablations (`losses.py`)."""

    kind: Literal["opmd", "grpo", "rest"] = opt(
        "opmd", "`opmd`: the k1.5 loss; `grpo`: clipped ratio with group-normalised advantages; `rest`: "
                "fine-tuning on the responses whose reward reaches `rest_threshold` (baselines).")
    tau: float = opt(0.1, "τ: strength of the KL term to the sampling policy, > 0. Paper gives none.")
    level: Literal["sequence", "token"] = opt(
        "token", "`sequence`: the paper's log-ratio of whole responses; `token`: per-token "
                 "log-ratios averaged over response tokens (ours).")
    baseline: Literal["mean", "logmeanexp"] = opt(
        "mean", "Estimate of τ log Z: mean reward of the k samples (paper) or τ log mean exp(r/τ).")
    opmd_scale: bool = opt(False, "opmd: divide a_j = r_j − r̄ by the group's reward std, as GRPO does "
                                  "(a deviation from SPEC §3).")
    clip_low: float = opt(0.2, "grpo: the ratio is clipped below at 1 - clip_low.")
    clip_high: float = opt(0.2, "grpo: the ratio is clipped above at 1 + clip_high (DAPO raises it, e.g. 0.28).")
    grpo_scale: bool = opt(True, "grpo: divide the group-centred reward by the group's std (false: Dr. GRPO).")
    rest_threshold: float = opt(1.0, "rest: the reward a response needs to be trained on.")

    def __post_init__(self) -> None:
        if not (0 <= self.clip_low < 1 and self.clip_high >= 0):
            raise ConfigError(f"loss: need 0 <= clip_low < 1 and clip_high >= 0, got {self.clip_low}, {self.clip_high}")
        if self.tau <= 0:
            raise ConfigError(f"loss.tau is {self.tau}: τ must be > 0 (it divides the rewards and scales "
                              "the KL term; 0.1 is the tested default)")


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
    optimizer_reset: Literal["all", "first_moment", "none"] = opt(
        "first_moment", "What of AdamW's state is cleared at the start of every iteration: `first_moment` "
                        "(the momentum only; the second moment and step count are kept, so an iteration's "
                        "first step is scaled by the gradient's history instead of moving every weight by "
                        "~lr; docs/rl.md has the study that chose it), `all` (SPEC §3 as written: the "
                        "reference policy changed), `none` (one optimizer for the whole run, as TRL and verl).")
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
    reward: str = opt("", "The reward that decides correctness in evaluation ('' = the run's `reward.names` "
                      "with their weights), e.g. 'world' to measure the true verifier while training on a "
                      "reward model. Built with its `[reward.<name>]` options when it is also in reward.names.")


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
    """Prompt sources of a job (`longrl.data.sources`; spec strings in docs/data.md)."""

    train: list[str] = opt(["world"], "Source specs of the training prompts, concatenated (`jsonl:PATH`, "
                           "`parquet:PATH`, `csv:PATH`, `hf:DIR?split=train`, `reasoning_gym:NAME?size=N`, "
                           "`humaneval`, `champ`, `world`). `world` is the tiny world of the [world] section.")
    eval: list[str] = opt(["world?split=eval"], "Source specs of the held-out prompts; must be given "
                          "whenever `train` is (evaluating on another task's split would mislead).")
    on_error: Literal["raise", "skip"] = opt(
        "raise", "A malformed row: `raise` stops with an error naming file, line and field; `skip` "
                 "reports it on stderr, goes on, and prints the count of skipped rows.")

    def check_given(self, given: set[str], where: Callable[[str], str]) -> None:
        if "train" in given and "eval" not in given:
            raise ConfigError(f"{where('train')} is set but data.eval is not: name the held-out prompts "
                              "too (e.g. eval = [\"jsonl:heldout.jsonl\"], or [\"world?split=eval\"] for "
                              "the tiny world), so evaluation measures the task you train on")
        if not self.train or not self.eval:
            raise ConfigError(f"{where('train' if not self.train else 'eval')}: no prompt sources; give "
                              "at least one spec (docs/data.md)")


@dataclass
class ClusterConfig:
    """The same loop on a Ray cluster with an FSDP2 trainer group (`longrl.cluster`, docs/cluster.md)."""

    enabled: bool = opt(False, "Run on Ray: rollout workers, reward workers and FSDP2 trainer ranks as "
                        "actors; the driver (this process) is the master. false = one process.")
    address: str = opt("", "Ray cluster to join ('' = $RAY_ADDRESS if set, else start a local instance).")
    num_cpus: int = opt(0, "CPUs of a local Ray instance (0 = all of this machine's).")
    trainer_ranks: int = opt(2, "FSDP2 ranks of the trainer group (one process each).")
    rollout_workers: int = opt(2, "Rollout actors, each holding an engine (`rollout.engine`).")
    reward_workers: int = opt(1, "Reward actors that score while generation continues (0 = score in the driver).")
    placement: Literal["colocated", "split"] = opt(
        "colocated", "`colocated`: trainer ranks and engines share the devices (engines sleep during "
                     "training where the platform can); `split`: separate device pools.")
    gpus_per_trainer_rank: float = opt(0.0, "GPUs each trainer rank asks Ray for (0 on CPU).")
    gpus_per_rollout_worker: float = opt(0.0, "GPUs each rollout actor asks Ray for (0 on CPU; with "
                                         "`colocated`, a fraction such as 0.5 shares a rank's GPU).")
    backend: Literal["auto", "gloo", "nccl"] = opt("auto", "torch.distributed backend of the trainer "
                                                   "group: auto = nccl on GPUs, gloo on CPU.")
    cpu_offload: bool = opt(False, "FSDP2: keep parameters and optimizer state in CPU memory between uses.")
    sync_bucket_mb: int = opt(256, "Weight sync: tensors travel to the engines in buckets of about this size.")
    sync_transport: Literal["auto", "object_store", "broadcast"] = opt(
        "auto", "Weight sync: `object_store` (trainer rank 0 puts the buckets into Ray's object store, every "
                "rollout worker fetches them) or `broadcast` (one torch.distributed broadcast per bucket from "
                "trainer rank 0 to every worker: gloo on CPU, NCCL between GPUs, which needs placement = split). "
                "`auto`: broadcast, except object_store for colocated actors on GPUs. docs/cluster.md compares them.")

    def transport(self) -> str:
        """`sync_transport` with `auto` resolved (the field's help)."""
        if self.sync_transport != "auto":
            return self.sync_transport
        on_gpus = bool(self.gpus_per_trainer_rank or self.gpus_per_rollout_worker)
        return "object_store" if on_gpus and self.placement == "colocated" else "broadcast"
    call_timeout_s: float = opt(
        3600.0, "A rollout or reward actor call still unanswered after this long counts as a hung actor: it "
                "is killed, replaced and its work issued again (0 = wait forever). Must exceed the longest "
                "legitimate call, a whole rollout chunk at the longest response length.")

    def __post_init__(self) -> None:
        if self.trainer_ranks < 1 or self.rollout_workers < 1 or self.reward_workers < 0:
            raise ConfigError("cluster: need trainer_ranks >= 1, rollout_workers >= 1, reward_workers >= 0")


@dataclass
class LoggingConfig:
    """Where the per-iteration metrics go besides `metrics.jsonl` (docs/rl.md, "Metrics")."""

    tensorboard: bool = opt(True, "TensorBoard events under `<run>/tensorboard/`.")
    wandb: bool = opt(False, "Also log to Weights & Biases (needs `pip install wandb`; files under "
                      "`<run>/wandb/`).")
    wandb_project: str = opt("longrl", "W&B project.")
    wandb_entity: str = opt("", "W&B team or user ('' = the logged-in default).")
    wandb_name: str = opt("", "W&B run name ('' = the run's `name`).")
    wandb_tags: list[str] = opt([], "W&B tags.")
    wandb_mode: Literal["", "online", "offline", "disabled"] = opt(
        "", "online, offline (no network; `wandb sync` uploads later) or disabled; '' = $WANDB_MODE, else online.")


@dataclass
class RunConfig:
    """An RL run (`longrl train`)."""

    name: str = opt("rl", "Run name: outputs go to `<out_dir>/<name>/`.")
    out_dir: str = opt("runs", "Parent directory of run directories.")
    iterations: int = opt(40, "RL iterations (rollout phase + training phase each).")
    max_train_s: float = opt(0.0, "Also stop once the iterations run by this process took this many seconds "
                             "(rollout, training and sync; not evaluation or checkpoints), evaluating and "
                             "saving there as after the last iteration; 0 = no time limit.")
    seed: int = opt(0, "Seed for sampling, data order and initialisation.")
    threads: int = opt(0, "torch intra-op threads (0 = torch default).")
    checkpoint_every: int = opt(0, "Save a resumable checkpoint every N iterations (0 = at end).")
    checkpoint_keep: int = opt(2, "Keep the newest N complete checkpoints, deleting older ones (0 = keep all).")
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
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def __post_init__(self) -> None:
        if self.eval.reward:
            from longrl.rewards.registry import check_reward

            check_reward(self.eval.reward, self.reward.options.get(self.eval.reward, {}),
                         lambda key: f"eval.reward ({key})")
        tp, gpus = self.rollout.vllm_tensor_parallel_size, self.cluster.gpus_per_rollout_worker
        if self.cluster.enabled and tp > 1 and gpus and gpus != tp:
            raise ConfigError(f"cluster.gpus_per_rollout_worker is {gpus:g} with rollout.vllm_tensor_parallel_size "
                              f"= {tp}: a sharded engine spans {tp} GPUs, so its actor must ask Ray for {tp}")
        if self.cluster.enabled and tp > 1 and gpus and self.cluster.placement == "colocated":
            raise ConfigError(f"cluster.placement = colocated with rollout.vllm_tensor_parallel_size = {tp}: a "
                              "colocated engine shares one trainer rank's GPU, and a sharded one needs "
                              f"{tp}; use cluster.placement = split")
        c = self.cluster
        if c.enabled and c.sync_transport == "broadcast" and c.placement == "colocated" and (
                c.gpus_per_trainer_rank or c.gpus_per_rollout_worker):
            raise ConfigError("cluster.sync_transport = broadcast with cluster.placement = colocated on GPUs: NCCL "
                              "cannot broadcast between two processes on one GPU (trainer rank 0 and the engine "
                              "beside it); use placement = split, or sync_transport = object_store")
        if self.rollout.samples_per_prompt < 2 and self.loss.baseline == "mean":
            raise ConfigError(
                f"rollout.samples_per_prompt is {self.rollout.samples_per_prompt}: with the mean baseline "
                "every advantage r - mean(r) of a group of one is 0 and training does nothing; sample at "
                "least 2 per prompt (8 is the default)")

