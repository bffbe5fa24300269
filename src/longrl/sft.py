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

Images (`longrl.vision`, docs/vision.md): with `tiny.vision` (and no `model.path`) the model is a
tiny Qwen2-VL with its processor; `model.path` may also name a vision-language model directory.
An example whose prompt has images (the world's add_img, count_img, text_img) is not packed: it
takes a row of its own, right-padded, and its log-probs come from `vision.vision_logprobs` with
its image inputs; the loss is the same mean over the trace tokens of all examples of the step,
which draws examples up to `rows_per_step` x `row_tokens` tokens whatever their kind.
Evaluation samples with the images, and `final/` holds the processor's files beside the model.
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
from longrl.packing import one_per_row, pack
from longrl.types import Prompt
from longrl.vision import (MultiModal, VisionInputs, build_tiny_processor, build_tiny_vlm, build_vision_tokenizer,
                           require_vision, vision_inputs_for, vision_logprobs)

Example = tuple[list[int], list[float], MultiModal | None]  # token ids, loss mask, image inputs (None: text)


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
    return response_example(tokenizer, encode_prompt(tokenizer, prompt), response)


def response_example(tokenizer, prompt_ids: list[int], response: str) -> tuple[list[int], list[float]]:
    """(token ids, loss mask) of encoded prompt + response + end token; the mask is 1 on the response."""
    response_ids = tokenizer(response, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    return prompt_ids + response_ids, [0.0] * len(prompt_ids) + [1.0] * len(response_ids)


def world_example(tokenizer, prompt: Prompt, direct: bool = False, vision: VisionInputs | None = None) -> Example:
    """`sft_example` of a world prompt with its image inputs: a prompt with images is encoded by
    `vision` (its placeholders expanded, `VisionInputs.encode`), a text prompt as `sft_example`."""
    if not prompt.images:
        return (*sft_example(tokenizer, prompt, direct), None)
    require_vision(prompt, vision)
    prompt_ids, mm = vision.encode(prompt)
    return (*response_example(tokenizer, prompt_ids, prompt.meta["direct" if direct else "trace"]), mm)


def sft_loss(model, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of the masked tokens of packed rows [B, T]."""
    logp = token_logprobs(model, ids, positions)  # [B, T]
    return -(logp * mask).sum() / mask.sum().clamp(min=1)


def step_loss(model, examples: list[Example], row_tokens: int, pad_id: int) -> torch.Tensor:
    """Mean negative log-likelihood of the masked tokens of one step's `examples`: text ones
    packed into rows of `row_tokens` (`sft_loss`), those with images one per row, right-padded,
    through `vision_logprobs`."""
    text = [e for e in examples if e[2] is None]
    images = [e for e in examples if e[2] is not None]
    if not images:
        rows = pack([e[0] for e in text], [[e[1] for e in text]], row_tokens, pad_id)
        return sft_loss(model, rows.input_ids, rows.position_ids, rows.values[0])
    total, count = 0.0, 0.0
    if text:
        rows = pack([e[0] for e in text], [[e[1] for e in text]], row_tokens, pad_id)
        mask = rows.values[0]  # [B, T]
        total, count = (token_logprobs(model, rows.input_ids, rows.position_ids) * mask).sum(), mask.sum()
    rows = one_per_row([e[0] for e in images], [[e[1] for e in images]], pad_id)
    mask = rows.values[0]  # [b, T]
    logp, _ = vision_logprobs(model, rows.input_ids, [e[2] for e in images], (rows.seq_ids >= 0).long(),
                              prompt_lens=[e[1].index(1.0) for e in images])  # [b, T]
    return -(total + (logp * mask).sum()) / (count + mask.sum()).clamp(min=1)


def lr_at(step: int, config: SFTConfig) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(config.steps - config.warmup_steps, 1)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def _initial_model(config: SFTConfig):
    """(model, tokenizer, `VisionInputs` or None): `model.path`'s, or a tiny model of the [tiny]
    section, a tiny Qwen2-VL with its processor when `tiny.vision`."""
    if config.model.path:
        model = load_model(config.model.path, config.model.dtype)
        return model, load_tokenizer(config.model.path), vision_inputs_for(model, config.model.path)
    if config.tiny.vision:
        tokenizer = build_vision_tokenizer()
        model = build_tiny_vlm(tokenizer, config.tiny, config.seed, vision_depth=config.tiny.vision_depth,
                               vision_dim=config.tiny.vision_dim)
        return model, tokenizer, VisionInputs(build_tiny_processor(tokenizer, model.config.vision_config.patch_size))
    tokenizer = build_char_tokenizer()
    return build_tiny_model(config.tiny, tokenizer, seed=config.seed), tokenizer, None


def example_source(config: SFTConfig, tokenizer, rng: random.Random, vision: VisionInputs | None = None):
    """A function drawing one random (ids, mask, image inputs or None) example from the
    `data.train` sources; prompts with images need `vision`."""
    draws = []
    for spec in config.data.train:
        parsed = parse_spec(spec)
        if parsed.kind == "world":
            pool = load_sources([spec], config.data.on_error, config.world)
            draws.append(lambda pool=pool: world_example(tokenizer, rng.choice(pool),
                                                         rng.random() < config.world.direct_fraction, vision))
        elif parsed.kind == "jsonl":
            rows = load_sft_rows(parsed.target)
            draws.append(lambda rows=rows: (*text_example(tokenizer, *rng.choice(rows)), None))
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
    model, tokenizer, vision = _initial_model(config)
    draw = example_source(config, tokenizer, random.Random(config.seed), vision)
    eval_prompts = load_sources(config.data.eval, config.data.on_error, config.world)
    for prompt in eval_prompts:  # before training: a prompt with images needs a vision-language model
        require_vision(prompt, vision)
    rewards = build_rewards(config.reward)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    log = (run_dir / "metrics.jsonl").open("w")
    bar = tqdm(range(config.steps), desc="sft", disable=not show_progress, dynamic_ncols=True)
    start, tokens = time.perf_counter(), 0
    model.train()
    for step in bar:
        examples, budget = [], config.rows_per_step * config.row_tokens
        while budget > 0:
            examples.append(draw())
            budget -= len(examples[-1][0])
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config)
        loss = step_loss(model, examples, config.row_tokens, tokenizer.pad_token_id)
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
    metrics = evaluate(engine, tokenizer, eval_prompts, rewards, config.eval, vision=vision)
    final = run_dir / "final"
    model.save_pretrained(final)
    (tokenizer if vision is None else vision.processor).save_pretrained(final)  # a processor: its tokenizer too
    (run_dir / "eval.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics
