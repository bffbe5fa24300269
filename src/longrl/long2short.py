"""Long2short (SPEC §7, paper §2.4): carry a long-CoT model's accuracy into fewer tokens.

Four methods, all starting from a long-CoT model (and, for merging, a short-CoT one):

- **Model merging**: θ = Σ_m w_m θ_m with Σ w_m = 1 (paper: the plain mean of the long and the
  short model). Checkpoints must share architecture, tensor names, shapes and dtypes; the merge
  keeps each tensor's dtype and copies the first checkpoint's config and tokenizer.
- **Shortest rejection sampling**: sample n = 8 responses per training prompt, keep the shortest
  correct one, SFT on the kept (prompt, response) rows (`sft.py`, a `jsonl:` source). It is one
  policy (`keep = "shortest"`) of rejection-sampled SFT, whose other policies (`all`, `longest`,
  `reflection`) make the long-CoT warm-up of SPEC §2 (`longrl rs-sft`).
- **DPO**: from the same n samples, positive y+ = the shortest correct response; negatives y- =
  every wrong response longer than y+, and every correct response longer than 1.5 × |y+|. Loss,
  with log π summed over response tokens and π_ref the frozen start model:

      L = −log σ( β [ (log π_θ(y+|x) − log π_ref(y+|x)) − (log π_θ(y-|x) − log π_ref(y-|x)) ] )

- **Long2short RL**: a preset (`configs/long2short_rl.toml`) run with `longrl train`: from the
  chosen checkpoint, a stronger length reward (SPEC §4) after a short warm-up and a much smaller
  `rollout.max_new_tokens`.

Deviations, all deliberate:
- "Correct" means verified correct *and* finished (the end token was sampled): a response cut at
  `max_new_tokens` is never a positive, and counts as wrong (a candidate negative) for DPO.
- Length is measured in response tokens, end token included (as `evaluate` counts them).
- DPO uses every (y+, y-) pair of a prompt, so a prompt with more bad samples weighs more.
- DPO's learning rate warms up linearly and then stays constant.

Shape legend: B packed rows, T tokens per row, N sequences, P preference pairs.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from longrl.config import DPOConfig, L2SSampleConfig, SFTConfig, ShortestRSConfig
from longrl.data.sources import DataError, load_sources, read_jsonl
from longrl.errors import LongrlError
from longrl.evaluate import evaluate
from longrl.models import check_model_dir, encode_prompt, load_policy, token_logprobs
from longrl.rewards.registry import build_rewards
from longrl.rewards.score import Rewards, score
from longrl.rollout.engine import HFEngine
from longrl.rollout.sample import sample
from longrl.packing import pack
from longrl.types import Prompt, SamplingParams


class MergeError(LongrlError, ValueError):
    """Checkpoints that cannot be averaged; the message names the first mismatch."""


# ----------------------------------------------------------------------------------------------
# Model merging
# ----------------------------------------------------------------------------------------------

_CONFIG_FILE_SUFFIXES = (".json", ".txt", ".model", ".jinja")


def _tensor_files(model_dir: Path) -> dict[str, str]:
    """Tensor name -> the safetensors file (inside `model_dir`) that holds it."""
    from safetensors import safe_open

    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        return dict(json.loads(index.read_text())["weight_map"])
    single = model_dir / "model.safetensors"
    if not single.is_file():
        raise MergeError(f"{model_dir}: no model.safetensors or model.safetensors.index.json; "
                         "merging reads safetensors checkpoints (save with save_pretrained)")
    with safe_open(single, framework="pt") as f:
        return {name: single.name for name in f.keys()}  # noqa: SIM118 (a safetensors handle, not a dict)


def _architecture(model_dir: Path) -> tuple[str, list[str]]:
    config = json.loads((model_dir / "config.json").read_text())
    return config.get("model_type", "?"), list(config.get("architectures") or [])


def _check_mergeable(dirs: Sequence[Path], maps: Sequence[dict[str, str]]) -> None:
    first, first_arch = dirs[0], _architecture(dirs[0])
    for other, other_map in zip(dirs[1:], maps[1:]):
        if _architecture(other) != first_arch:
            raise MergeError(f"cannot merge {first} and {other}: architectures differ "
                             f"({first_arch} vs {_architecture(other)})")
        missing = sorted(set(maps[0]) ^ set(other_map))
        if missing:
            holder = first if missing[0] in maps[0] else other
            raise MergeError(f"cannot merge {first} and {other}: tensor {missing[0]!r} is only in {holder}")


def _weights(weights: Sequence[float] | None, count: int) -> list[float]:
    if count < 2:
        raise MergeError(f"merging needs at least two checkpoints, got {count}")
    weights = [1.0 / count] * count if not weights else list(weights)
    if len(weights) != count:
        raise MergeError(f"{len(weights)} weights for {count} checkpoints: give one weight per checkpoint")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise MergeError(f"weights {weights} must be >= 0 with a positive sum")
    return [w / sum(weights) for w in weights]


def merge_checkpoints(paths: Sequence[str | Path], out: str | Path,
                      weights: Sequence[float] | None = None) -> Path:
    """Write the weighted average of Hugging Face checkpoints `paths` to `out`.

    Weights default to equal and are normalised to sum to 1. Each tensor is averaged in float64
    and stored in its own dtype; integer tensors must be equal. The first checkpoint's config,
    tokenizer and shard layout are kept.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    dirs = [check_model_dir(p) for p in paths]
    weights = _weights(weights, len(dirs))
    maps = [_tensor_files(d) for d in dirs]
    _check_mergeable(dirs, maps)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for file_name in sorted(set(maps[0].values())):
        names = sorted(n for n, f in maps[0].items() if f == file_name)
        merged = {}
        for name in names:
            tensors = []
            for d, m in zip(dirs, maps):
                with safe_open(d / m[name], framework="pt") as f:
                    tensors.append(f.get_tensor(name))
            merged[name] = _average(name, tensors, weights, dirs)
        save_file(merged, out / file_name, metadata={"format": "pt"})
    for item in dirs[0].iterdir():
        if item.is_file() and item.suffix in _CONFIG_FILE_SUFFIXES:
            shutil.copy2(item, out / item.name)
    return out


def _average(name: str, tensors: list[torch.Tensor], weights: list[float], dirs: list[Path]) -> torch.Tensor:
    first = tensors[0]
    for other, d in zip(tensors[1:], dirs[1:]):
        if other.shape != first.shape:
            raise MergeError(f"cannot merge {dirs[0]} and {d}: tensor {name!r} has shape "
                             f"{tuple(first.shape)} vs {tuple(other.shape)}")
        if other.dtype != first.dtype:
            raise MergeError(f"cannot merge {dirs[0]} and {d}: tensor {name!r} is {first.dtype} vs "
                             f"{other.dtype}; convert one checkpoint first")
    if not first.is_floating_point():
        if any(not torch.equal(first, t) for t in tensors[1:]):
            raise MergeError(f"cannot merge: integer tensor {name!r} differs between checkpoints")
        return first.clone()
    total = sum(w * t.double() for w, t in zip(weights, tensors))
    return total.to(first.dtype).contiguous()


# ----------------------------------------------------------------------------------------------
# Choosing among n samples (pure)
# ----------------------------------------------------------------------------------------------


def shortest_correct(lengths: Sequence[int], correct: Sequence[bool]) -> int | None:
    """Index of the shortest correct response (the first one on a tie), None if none is correct."""
    if len(lengths) != len(correct):
        raise ValueError(f"{len(lengths)} lengths but {len(correct)} correctness flags")
    best = None
    for i, (n, ok) in enumerate(zip(lengths, correct)):
        if ok and (best is None or n < lengths[best]):
            best = i
    return best


def dpo_pairs(lengths: Sequence[int], correct: Sequence[bool], ratio: float = 1.5) -> list[tuple[int, int]]:
    """(positive, negative) index pairs of one prompt's samples by the k1.5 rule (module docstring)."""
    best = shortest_correct(lengths, correct)
    if best is None:
        return []
    shortest = lengths[best]
    return [(best, i) for i, (n, ok) in enumerate(zip(lengths, correct))
            if (not ok and n > shortest) or (ok and n > ratio * shortest)]


def dpo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
             ref_rejected_logps: torch.Tensor, beta: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean DPO loss over P pairs; each input is [P] summed response log-probs."""
    chosen = chosen_logps - ref_chosen_logps  # [P] implicit reward of y+, over β
    rejected = rejected_logps - ref_rejected_logps  # [P]
    margin = beta * (chosen - rejected)  # [P]
    loss = -F.logsigmoid(margin).mean()
    return loss, {
        "dpo/loss": loss.item(),
        "dpo/margin": margin.mean().item(),
        "dpo/accuracy": (margin > 0).float().mean().item(),
        "dpo/chosen_logratio": chosen.mean().item(),
        "dpo/rejected_logratio": rejected.mean().item(),
    }


# ----------------------------------------------------------------------------------------------
# Sampling n responses per prompt
# ----------------------------------------------------------------------------------------------


def with_instruction(prompt: Prompt, instruction: str) -> Prompt:
    """`prompt` asked with `instruction` before it (in its first user message, for a chat)."""
    if prompt.messages:
        messages = [dict(m) for m in prompt.messages]
        first = next((i for i, m in enumerate(messages) if m["role"] == "user"), 0)
        messages[first]["content"] = f"{instruction}\n\n{messages[first]['content']}"
        return dataclasses.replace(prompt, messages=messages)
    return dataclasses.replace(prompt, text=f"{instruction}\n\n{prompt.text}")


def sample_groups(engine, tokenizer, prompts: Sequence[Prompt], rewards: Rewards,
                  config: L2SSampleConfig) -> list[dict]:
    """`config.n` scored responses per prompt, one JSON-ready row per prompt.

    A row's `prompt` is the prompt's chat messages when it has them, else its text, without
    `config.instruction` (the samples are asked with it; training rows teach answering without).
    """
    params = SamplingParams(temperature=config.temperature, top_p=config.top_p,
                            max_new_tokens=config.max_new_tokens)
    asked = [with_instruction(p, config.instruction) for p in prompts] if config.instruction else prompts
    trajectories, _ = sample(engine, tokenizer, asked, config.n, params)
    score(trajectories, rewards)
    rows = []
    for i, prompt in enumerate(prompts):
        responses = [{"text": t.text, "token_ids": t.response_ids, "tokens": t.num_response_tokens,
                      "finish_reason": t.finish_reason, "correct": t.reward >= 1.0 and t.finish_reason == "stop"}
                     for t in trajectories[i * config.n:(i + 1) * config.n]]
        rows.append({"id": prompt.id, "prompt": prompt.messages or prompt.text, "answer": prompt.answer,
                     "responses": responses})
    return rows


def load_groups(path: str | Path) -> list[dict]:
    """Rows written by `sample_groups`; a malformed row names the file, line and field."""
    rows = []
    for where, row in read_jsonl(path, "samples file"):
        for name in ("prompt", "responses"):
            if name not in row:
                raise DataError(f"{path}, {where}: missing field {name!r}")
        for r in row["responses"]:
            for name in ("text", "token_ids", "tokens", "correct"):
                if name not in r:
                    raise DataError(f"{path}, {where}: a response lacks field {name!r}")
        rows.append(row)
    return rows


def _groups_for(config: ShortestRSConfig | DPOConfig, model, tokenizer, run_dir: Path) -> list[dict]:
    """Sample `sample.num_prompts` prompts of `data.train` anew (saved as `samples.jsonl`), or
    reuse `sample.samples_file`."""
    if config.sample.samples_file:
        return load_groups(config.sample.samples_file)
    pool = load_sources(config.data.train, config.data.on_error, config.world)
    prompts = random.Random(config.seed).sample(pool, min(config.sample.num_prompts, len(pool)))
    engine = HFEngine(model, tokenizer, batch_size=config.sample.batch_size, seed=config.seed)
    rows = sample_groups(engine, tokenizer, prompts, build_rewards(config.reward), config.sample)
    with (run_dir / "samples.jsonl").open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return rows


def _sample_metrics(groups: list[dict]) -> dict[str, float]:
    responses = [r for g in groups for r in g["responses"]]
    return {"sample/prompts": float(len(groups)),
            "sample/accuracy": sum(r["correct"] for r in responses) / max(len(responses), 1),
            "sample/mean_tokens": sum(r["tokens"] for r in responses) / max(len(responses), 1),
            "sample/prompts_with_correct": float(sum(any(r["correct"] for r in g["responses"]) for g in groups))}


def _evaluate_and_save(model, tokenizer, config, run_dir: Path, extra: dict[str, float]) -> dict[str, float]:
    model.eval()
    engine = HFEngine(model, tokenizer, batch_size=256, seed=config.seed)
    eval_prompts = load_sources(config.data.eval, config.data.on_error, config.world)
    metrics = evaluate(engine, tokenizer, eval_prompts, build_rewards(config.reward), config.eval)
    model.save_pretrained(run_dir / "final")
    tokenizer.save_pretrained(run_dir / "final")
    metrics = extra | metrics
    (run_dir / "eval.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


# ----------------------------------------------------------------------------------------------
# Shortest rejection sampling
# ----------------------------------------------------------------------------------------------


def kept_samples(responses: Sequence[dict], keep: str, markers: Sequence[str] = ()) -> list[int]:
    """Indices of the correct responses of one prompt that `keep` selects: `shortest` or `longest`
    (one; the first on a tie), `all` (each distinct text once), `reflection` (distinct texts that
    contain one of `markers`, case-insensitive)."""
    correct = [i for i, r in enumerate(responses) if r["correct"]]
    if not correct:
        return []
    if keep == "shortest":
        return [min(correct, key=lambda i: responses[i]["tokens"])]
    if keep == "longest":
        return [max(correct, key=lambda i: (responses[i]["tokens"], -i))]
    if keep not in ("all", "reflection"):
        raise ValueError(f"unknown keep policy {keep!r}: use shortest, longest, all or reflection")
    seen, out = set(), []
    for i in correct:
        text = responses[i]["text"]
        if text in seen:
            continue
        seen.add(text)
        if keep == "all" or any(m.lower() in text.lower() for m in markers):
            out.append(i)
    return out


def selected_rows(groups: list[dict], keep: str = "shortest", markers: Sequence[str] = ()) -> list[dict]:
    """SFT rows of the samples `keep` selects (`kept_samples`): {prompt, response} for a text
    prompt, {messages} for a chat prompt (the answer appended as the assistant's message)."""
    rows = []
    for g in groups:
        for index in kept_samples(g["responses"], keep, markers):
            chosen, prompt = g["responses"][index], g["prompt"]
            if isinstance(prompt, list):
                row = {"messages": [*prompt, {"role": "assistant", "content": chosen["text"]}]}
            else:
                row = {"prompt": prompt, "response": chosen["text"]}
            rows.append(row | {"tokens": chosen["tokens"]})
    return rows


def shortest_rows(groups: list[dict]) -> list[dict]:
    """One SFT row per prompt that has a correct sample, the shortest (`selected_rows`)."""
    return selected_rows(groups, "shortest")


def run_shortest_rs(config: ShortestRSConfig, show_progress: bool = True) -> dict[str, float]:
    """Sample with `model.path`, keep the correct samples `config.keep` selects, SFT `model.path`
    on them (`longrl rs-sft`; `longrl shortest-rs` with keep = shortest); eval metrics."""
    from longrl.sft import run_sft, start_job

    run_dir = start_job(config, "shortest_rs.toml")
    model, tokenizer = load_policy(config.model.path, config.model.dtype)
    groups = _groups_for(config, model, tokenizer, run_dir)
    rows = selected_rows(groups, config.keep, config.reflection_markers)
    if not rows:
        if not any(r["correct"] for g in groups for r in g["responses"]):
            raise DataError(f"{config.model.path}: no prompt had a correct sample; nothing to train on")
        raise DataError(f"{config.model.path}: no correct sample matched keep = {config.keep!r} "
                        f"(reflection_markers {config.reflection_markers}); nothing to train on")
    data_file = run_dir / ("shortest.jsonl" if config.keep == "shortest" else f"kept_{config.keep}.jsonl")
    data_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    del model
    sft = SFTConfig(name=config.name, out_dir=config.out_dir, seed=config.seed, threads=config.threads,
                    steps=config.steps, lr=config.lr, warmup_steps=config.warmup_steps,
                    rows_per_step=config.rows_per_step, row_tokens=config.row_tokens, model=config.model,
                    world=config.world, data=dataclasses.replace(config.data, train=[f"jsonl:{data_file}"]),
                    reward=config.reward, eval=config.eval)
    metrics = run_sft(sft, show_progress=show_progress)
    kept = {"rs/kept": float(len(rows)), "rs/kept_mean_tokens": sum(r["tokens"] for r in rows) / len(rows)}
    metrics = _sample_metrics(groups) | kept | metrics
    (run_dir / "eval.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


# ----------------------------------------------------------------------------------------------
# DPO
# ----------------------------------------------------------------------------------------------


def preference_pairs(groups: list[dict], tokenizer, ratio: float) -> list[tuple[list[int], list[int], list[int]]]:
    """(prompt ids, chosen response ids, rejected response ids) for every pair of every prompt."""
    out = []
    for g in groups:
        responses = g["responses"]
        prompt_ids = encode_prompt(tokenizer, g["prompt"])
        for pos, neg in dpo_pairs([r["tokens"] for r in responses], [r["correct"] for r in responses], ratio):
            out.append((prompt_ids, list(responses[pos]["token_ids"]), list(responses[neg]["token_ids"])))
    return out


def sequence_logprobs(model, prompts: Sequence[list[int]], responses: Sequence[list[int]],
                      row_tokens: int, pad_id: int) -> torch.Tensor:
    """[N] log π(response | prompt), summed over response tokens, in packed rows."""
    sequences = [p + r for p, r in zip(prompts, responses)]
    masks = [[0.0] * len(p) + [1.0] * len(r) for p, r in zip(prompts, responses)]
    rows = pack(sequences, [masks], row_tokens, pad_id)
    logp = token_logprobs(model, rows.input_ids, rows.position_ids) * rows.values[0]  # [B, T]
    seq = rows.seq_ids.clamp(min=0).reshape(-1)  # [B*T]
    return torch.zeros(len(sequences), dtype=logp.dtype).index_add(0, seq, logp.reshape(-1))  # [N]


@torch.no_grad()
def reference_logprobs(model, pairs, row_tokens: int, pad_id: int, chunk: int = 64) -> torch.Tensor:
    """[P, 2] summed log-probs of (chosen, rejected) under the frozen start model."""
    model.eval()
    out = []
    for start in range(0, len(pairs), chunk):
        part = pairs[start:start + chunk]
        prompts = [p for p, _, _ in part] * 2
        responses = [c for _, c, _ in part] + [r for _, _, r in part]
        logp = sequence_logprobs(model, prompts, responses, row_tokens, pad_id)  # [2p]
        out.append(torch.stack([logp[:len(part)], logp[len(part):]], dim=1))  # [p, 2]
    return torch.cat(out)


def run_dpo(config: DPOConfig, show_progress: bool = True) -> dict[str, float]:
    """Pairs from n samples of `model.path`, DPO against it frozen; eval metrics of the result."""
    from tqdm import tqdm

    from longrl.sft import start_job

    run_dir = start_job(config)
    model, tokenizer = load_policy(config.model.path, config.model.dtype)
    groups = _groups_for(config, model, tokenizer, run_dir)
    pairs = preference_pairs(groups, tokenizer, config.length_ratio)
    if not pairs:
        raise DataError(f"{config.model.path}: no preference pairs (no prompt had a correct sample "
                        "and a longer negative); sample more prompts or a larger sample.n")
    pad = tokenizer.pad_token_id
    reference = reference_logprobs(model, pairs, config.row_tokens, pad)  # [P, 2]
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    rng, order = random.Random(config.seed), []
    log = (run_dir / "metrics.jsonl").open("w")
    bar = tqdm(range(config.steps), desc="dpo", disable=not show_progress, dynamic_ncols=True)
    start = time.perf_counter()
    model.train()
    for step in bar:
        if len(order) < config.pairs_per_step:  # reshuffle once every pair has been used
            order += rng.sample(range(len(pairs)), len(pairs))
        chosen_idx, order = order[:config.pairs_per_step], order[config.pairs_per_step:]
        part = [pairs[i] for i in chosen_idx]
        logp = sequence_logprobs(model, [p for p, _, _ in part] * 2,
                                 [c for _, c, _ in part] + [r for _, _, r in part], config.row_tokens, pad)  # [2P]
        ref = reference[chosen_idx]  # [P, 2]
        loss, metrics = dpo_loss(logp[:len(part)], logp[len(part):], ref[:, 0], ref[:, 1], config.beta)
        for group in optimizer.param_groups:
            group["lr"] = config.lr * min(1.0, (step + 1) / max(config.warmup_steps, 1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % config.log_every == 0 or step == config.steps - 1:
            log.write(json.dumps({"step": step, **metrics, "perf/elapsed_s": time.perf_counter() - start}) + "\n")
            log.flush()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    log.close()
    extra = _sample_metrics(groups) | {"dpo/pairs": float(len(pairs)),
                                      "dpo/final_margin": metrics["dpo/margin"]}
    return _evaluate_and_save(model, tokenizer, config, run_dir, extra)

