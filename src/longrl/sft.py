"""Long-CoT SFT warm-up (SPEC §2): fine-tune on verified chain-of-thought traces.

Each example is the chat-formatted prompt followed by its trace and the end token; prompt tokens
are masked from the loss, and several examples are packed into one row (their positions restart
so attention stays inside each example). The loss is the mean token cross-entropy over trace
tokens; the learning rate warms up linearly and decays with a cosine to a tenth of its peak.
The world's traces are verified by construction (they are computed, not sampled). With
`world.direct_fraction` > 0 some examples answer directly, with no chain of thought. With
`data_file` the examples are instead the `prompt`/`response` rows of a JSONL file (for instance the
shortest correct samples that `longrl shortest-rs` keeps, SPEC §7).
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import torch

from longrl.config import SFTConfig, dump_toml
from longrl.data.sources import DataError, read_jsonl
from longrl.data.worlds import World, build_char_tokenizer, build_tiny_model
from longrl.evaluate import evaluate
from longrl.models import encode_prompt, load_model, load_tokenizer, token_logprobs
from longrl.rewards.registry import get_reward
from longrl.rollout.engine import HFEngine
from longrl.trainer import pack
from longrl.types import Prompt


def sft_example(tokenizer, prompt: Prompt, direct: bool = False) -> tuple[list[int], list[float]]:
    """(token ids, loss mask) of prompt + trace + end token; the mask is 1 on the trace.

    `direct` uses the answer-only trace instead of the chain of thought.
    """
    return text_example(tokenizer, prompt.text, prompt.meta["direct" if direct else "trace"])


def load_sft_rows(path: str | Path) -> list[tuple[str, str]]:
    """(prompt, response) pairs of a JSONL file with string fields `prompt` and `response`."""
    rows = []
    for where, row in read_jsonl(path, "SFT data file"):
        for name in ("prompt", "response"):
            if not isinstance(row.get(name), str):
                raise DataError(f"{path}, {where}: field {name!r} must be a string")
        rows.append((row["prompt"], row["response"]))
    if not rows:
        raise DataError(f"{path}: no rows to train on")
    return rows


def text_example(tokenizer, prompt: str, response: str) -> tuple[list[int], list[float]]:
    """(token ids, loss mask) of a chat-formatted prompt + response + end token; the mask is 1 on the response."""
    prompt_ids = encode_prompt(tokenizer, prompt)
    response_ids = tokenizer(response, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    return prompt_ids + response_ids, [0.0] * len(prompt_ids) + [1.0] * len(response_ids)


def sft_loss(model, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of the masked tokens of packed rows [B, T]."""
    logp = token_logprobs(model, ids, positions)  # [B, T]
    return -(logp * mask).sum() / mask.sum().clamp(min=1)


def lr_at(step: int, config: SFTConfig) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(config.steps - config.warmup_steps, 1)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def _initial_model(config: SFTConfig):
    if config.model.path:
        return load_model(config.model.path, config.model.dtype), load_tokenizer(config.model.path)
    tokenizer = build_char_tokenizer()
    return build_tiny_model(config.tiny, tokenizer, seed=config.seed), tokenizer


def example_source(config: SFTConfig, tokenizer, world: World, rng: random.Random):
    """A function drawing one random (ids, mask) training example: a `data_file` row or a world trace."""
    if config.data_file:
        rows = load_sft_rows(config.data_file)
        return lambda: text_example(tokenizer, *rng.choice(rows))
    pool = world.train_prompts(config.world.train_size)
    return lambda: sft_example(tokenizer, rng.choice(pool), rng.random() < config.world.direct_fraction)


def run_sft(config: SFTConfig, show_progress: bool = True) -> dict[str, float]:
    """Train, evaluate on the held-out split, save `<out_dir>/<name>/final`; return metrics."""
    from tqdm import tqdm

    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    run_dir = Path(config.out_dir) / config.name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.toml").write_text(dump_toml(config))
    model, tokenizer = _initial_model(config)
    world = World(config.world)
    draw = example_source(config, tokenizer, world, random.Random(config.seed))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    log = (run_dir / "metrics.jsonl").open("w")
    bar = tqdm(range(config.steps), desc="sft", disable=not show_progress, dynamic_ncols=True)
    start, tokens = time.perf_counter(), 0
    model.train()
    for step in bar:
        examples, budget = [], config.rows_per_step * config.row_tokens
        while budget > 0:
            ids, mask = draw()
            examples.append((ids, mask))
            budget -= len(ids)
        rows = pack([e[0] for e in examples], [[e[1] for e in examples]], config.row_tokens,
                    tokenizer.pad_token_id)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config)
        loss = sft_loss(model, rows.input_ids, rows.position_ids, rows.values[0])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += sum(len(e[0]) for e in examples)
        if step % config.log_every == 0 or step == config.steps - 1:
            row = {"step": step, "sft/loss": loss.item(), "sft/lr": lr_at(step, config),
                   "perf/train_tokens_per_s": tokens / (time.perf_counter() - start)}
            log.write(json.dumps(row) + "\n")
            log.flush()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    log.close()
    model.eval()
    engine = HFEngine(model, tokenizer, batch_size=256, seed=config.seed)
    metrics = evaluate(engine, tokenizer, world.eval_prompts(), {"world": (get_reward("world"), 1.0)}, config.eval)
    final = run_dir / "final"
    model.save_pretrained(final)
    tokenizer.save_pretrained(final)
    (run_dir / "eval.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics
