"""Long-CoT SFT warm-up (SPEC §2): fine-tune on verified chain-of-thought traces.

Each example is the chat-formatted prompt followed by its trace and the end token; prompt tokens
are masked from the loss, and several examples are packed into one row (their positions restart
so attention stays inside each example). The loss is the mean token cross-entropy over trace
tokens; the learning rate warms up linearly and decays with a cosine to a tenth of its peak.
Examples come from the `data.train` sources:
- `world`: the tiny world's traces, verified by construction (computed, not sampled); with
  `world.direct_fraction` > 0 some examples answer directly, with no chain of thought;
- `jsonl:PATH` (or a `.jsonl` path): rows with string fields `prompt` and `response`, or a chat
  `messages` list whose last message is the assistant's answer (for instance the shortest
  correct samples that `longrl shortest-rs` keeps, SPEC §7).
The model is evaluated on `data.eval`, scored by the `reward` section.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import torch

from longrl.config import SFTConfig, dump_toml
from longrl.data.sources import DataError, load_sources, parse_spec, read_jsonl
from longrl.evaluate import evaluate
from longrl.models import encode_prompt, load_model, load_tokenizer, token_logprobs
from longrl.rewards.registry import build_rewards
from longrl.rollout.engine import HFEngine
from longrl.tiny import build_char_tokenizer, build_tiny_model
from longrl.trainer import pack
from longrl.types import Prompt


def sft_example(tokenizer, prompt: Prompt, direct: bool = False) -> tuple[list[int], list[float]]:
    """(token ids, loss mask) of prompt + trace + end token; the mask is 1 on the trace.

    `direct` uses the answer-only trace instead of the chain of thought.
    """
    return text_example(tokenizer, prompt.text, prompt.meta["direct" if direct else "trace"])


def load_sft_rows(path: str | Path) -> list[tuple[str | list[dict], str]]:
    """(prompt, response) pairs of a JSONL file: `prompt`/`response` strings, or chat `messages`
    ending with the assistant's answer (the prompt is then the messages before it)."""
    rows = []
    for where, row in read_jsonl(path, "SFT data file"):
        if "messages" in row:
            messages = row["messages"]
            if (not isinstance(messages, list) or len(messages) < 2 or not all(isinstance(m, dict) for m in messages)
                    or messages[-1].get("role") != "assistant" or not isinstance(messages[-1].get("content"), str)):
                raise DataError(f"{path}, {where}: field 'messages' must be a list of {{role, content}} "
                                "messages ending with the assistant's answer")
            rows.append((messages[:-1], messages[-1]["content"]))
            continue
        for name in ("prompt", "response"):
            if not isinstance(row.get(name), str):
                raise DataError(f"{path}, {where}: field {name!r} must be a string (or give `messages`)")
        rows.append((row["prompt"], row["response"]))
    if not rows:
        raise DataError(f"{path}: no rows to train on")
    return rows


def text_example(tokenizer, prompt: str | list[dict], response: str) -> tuple[list[int], list[float]]:
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


def example_source(config: SFTConfig, tokenizer, rng: random.Random):
    """A function drawing one random (ids, mask) example from the `data.train` sources."""
    draws = []
    for spec in config.data.train:
        parsed = parse_spec(spec)
        if parsed.kind == "world":
            pool = load_sources([spec], config.data.on_error, config.world)
            draws.append(lambda pool=pool: sft_example(tokenizer, rng.choice(pool),
                                                       rng.random() < config.world.direct_fraction))
        elif parsed.kind == "jsonl":
            rows = load_sft_rows(parsed.target)
            draws.append(lambda rows=rows: text_example(tokenizer, *rng.choice(rows)))
        else:
            raise DataError(f"data.train source {spec!r}: SFT needs responses; give `world` or a JSONL "
                            "file of prompt/response (or messages) rows")
    return draws[0] if len(draws) == 1 else lambda: rng.choice(draws)()


def start_job(config, config_file: str = "config.toml") -> Path:
    """Threads and seed of a job's config (`threads`, `seed`); its run directory, created with
    the resolved config written into it as `config_file`."""
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    run_dir = Path(config.out_dir) / config.name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / config_file).write_text(dump_toml(config))
    return run_dir


def run_sft(config: SFTConfig, show_progress: bool = True) -> dict[str, float]:
    """Train, evaluate on the held-out split, save `<out_dir>/<name>/final`; return metrics."""
    from tqdm import tqdm

    run_dir = start_job(config)
    model, tokenizer = _initial_model(config)
    draw = example_source(config, tokenizer, random.Random(config.seed))
    eval_prompts = load_sources(config.data.eval, config.data.on_error, config.world)
    rewards = build_rewards(config.reward)
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
    metrics = evaluate(engine, tokenizer, eval_prompts, rewards, config.eval)
    final = run_dir / "final"
    model.save_pretrained(final)
    tokenizer.save_pretrained(final)
    (run_dir / "eval.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics
