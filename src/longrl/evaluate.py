"""Evaluation: pass@1 averaged over n samples, unbiased pass@k, mean response tokens (SPEC §9).

pass@1 is the mean correctness over n sampled responses per prompt (the paper averages 8 runs);
pass@k is the unbiased estimate 1 − C(n−c, k) / C(n, k) from the same n samples, with c of them
correct; mean response tokens are reported beside every accuracy. `token_efficiency` puts several
checkpoints on the same prompts and seed, for the accuracy-vs-tokens comparison of long2short (SPEC §7).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from math import comb
from pathlib import Path

from longrl.config import EvalConfig
from longrl.rewards.score import Rewards, score
from longrl.rollout.sample import sample
from longrl.types import Prompt, SamplingParams
from longrl.vision import VisionInputs, vision_inputs_for


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 − C(n−c, k) / C(n, k)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per prompt, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def evaluate(engine, tokenizer, prompts: Sequence[Prompt], rewards: Rewards, config: EvalConfig,
             correct_threshold: float = 1.0, vision: VisionInputs | None = None) -> dict[str, float]:
    """Sample `config.n_samples` responses per prompt and score them; flat `eval/...` metrics.

    A response counts as correct when its total reward reaches `correct_threshold`. Prompts with
    images need `vision`, the policy's `VisionInputs` (`rollout/sample.py`).
    """
    prompts = list(prompts)[: config.num_prompts]
    n = config.n_samples
    params = SamplingParams(temperature=config.temperature, top_p=config.top_p,
                            max_new_tokens=config.max_new_tokens)
    trajectories, rollout = sample(engine, tokenizer, prompts, n, params, vision=vision)
    score(trajectories, rewards)
    correct = [t.reward >= correct_threshold for t in trajectories]
    metrics = {
        "eval/pass@1": sum(correct) / max(len(correct), 1),
        "eval/mean_tokens": rollout["rollout/mean_tokens"],
        "eval/truncated": rollout["rollout/truncated"],
        "eval/prompts": float(len(prompts)),
        "eval/samples_per_prompt": float(n),
        "perf/eval_tokens_per_s": rollout["perf/rollout_tokens_per_s"],
    }
    for k in config.pass_k:
        if k > 1:
            per_prompt = [sum(correct[i * n:(i + 1) * n]) for i in range(len(prompts))]
            metrics[f"eval/pass@{k}"] = sum(pass_at_k(n, c, k) for c in per_prompt) / max(len(prompts), 1)
    return metrics


@dataclass
class EfficiencyRow:
    """One checkpoint's point on the accuracy-vs-tokens plane (SPEC §7, token efficiency)."""

    name: str
    pass_at_1: float
    mean_tokens: float


def token_efficiency(checkpoints: Mapping[str, str | Path], prompts: Sequence[Prompt],
                     rewards: Rewards, config: EvalConfig, seed: int = 0,
                     dtype: str = "float32", batch_size: int = 256) -> list[EfficiencyRow]:
    """pass@1 and mean response tokens of each named checkpoint on the same prompts and seed."""
    from longrl.models import load_policy
    from longrl.rollout.engine import HFEngine

    rows = []
    for name, path in checkpoints.items():
        model, tokenizer = load_policy(path, dtype)
        engine = HFEngine(model, tokenizer, batch_size=batch_size, seed=seed)
        metrics = evaluate(engine, tokenizer, prompts, rewards, config, vision=vision_inputs_for(model, path))
        rows.append(EfficiencyRow(name, metrics["eval/pass@1"], metrics["eval/mean_tokens"]))
    return rows
