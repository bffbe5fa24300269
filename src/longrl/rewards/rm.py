"""The classic reward model (SPEC §6): a scalar head on a causal LM reads question, reference and
response and says how likely the response is correct.

Input: one chat, formatted with the tokenizer's chat template (plain text joined by blank lines
without one), the response as the assistant's turn:

    user:      Question:\n<prompt text>\n\nReference answer:\n<reference>     (no reference: omitted)
    assistant: <response>

The score is read at the last token of that sequence: the backbone's final hidden state there
goes through a linear head to one logit (`AutoModelForSequenceClassification` with one label;
its head is `score`). The position is taken from the attention mask rather than from the pad
token, so a tokenizer whose pad token is its end token (most chat models) scores correctly, and a
batch equals one plain forward pass per sequence (tested). Inputs longer than `max_tokens` keep
their end: the response's conclusion is where correctness shows.

- `train_rm` (`longrl rm train`): binary cross-entropy on labelled JSONL rows
  `{"prompt", "reference" (optional), "response", "label": 0 or 1}` (labels from a verifier or
  from people), held-out accuracy after each epoch, the model written as a normal Hugging Face
  directory.
- `rm_reward` (the reward `rm`, `[reward.rm] model = DIR`): batched scoring on the run's device;
  `output` is the probability sigmoid(logit) (default), 1/0 at `threshold`, or the raw logit.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from longrl.types import Prompt, RewardResult


@dataclass
class RMRewardConfig:
    """Options of the `rm` reward: a run's `[reward.rm]` table."""

    model: str = field(default="", metadata={"help": "Directory of a trained reward model (`longrl rm train`)."})
    output: Literal["probability", "binary", "logit"] = field(default="probability", metadata={
        "help": "probability: sigmoid(logit); binary: 1.0 when the probability reaches `threshold`; logit: raw."})
    threshold: float = field(default=0.5, metadata={"help": "binary output: the probability that counts as correct."})
    batch_size: int = field(default=16, metadata={"help": "Sequences per forward pass."})
    max_tokens: int = field(default=4096, metadata={"help": "Longer inputs keep their last max_tokens tokens."})
    device: str = field(default="auto", metadata={"help": "auto (CUDA when present), cpu, cuda, cuda:N."})


def rm_messages(question: str, reference: str | None, response: str) -> list[dict]:
    """The chat an RM reads (module docstring)."""
    user = f"Question:\n{question}"
    if reference:
        user += f"\n\nReference answer:\n{reference}"
    return [{"role": "user", "content": user}, {"role": "assistant", "content": response}]


def rm_input_ids(tokenizer, question: str, reference: str | None, response: str, max_tokens: int) -> list[int]:
    messages = rm_messages(question, reference, response)
    if tokenizer.chat_template:
        encoded = tokenizer.apply_chat_template(messages, tokenize=True)
        ids = list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)
    else:
        ids = tokenizer("\n\n".join(m["content"] for m in messages)).input_ids
    return ids[-max_tokens:]


def load_rm(path: str | Path, device: torch.device | str = "cpu"):
    """(model, tokenizer) of an RM directory, or of a causal LM to start training one from (its new
    head is initialised by transformers)."""
    from transformers import AutoModelForSequenceClassification

    from longrl.models import check_model_dir, load_tokenizer

    tokenizer = load_tokenizer(path)
    model = AutoModelForSequenceClassification.from_pretrained(check_model_dir(path), num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(device), tokenizer


def rm_logits(model, batch: Sequence[list[int]], pad_id: int) -> torch.Tensor:
    """One logit per sequence of `batch` (right-padded together): [N]."""
    device = next(model.parameters()).device
    width = max(len(ids) for ids in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, seq in enumerate(batch):
        ids[i, :len(seq)] = torch.tensor(seq)
        mask[i, :len(seq)] = 1
    ids, mask = ids.to(device), mask.to(device)
    backbone = getattr(model, model.base_model_prefix)
    hidden = backbone(input_ids=ids, attention_mask=mask).last_hidden_state  # [N, T, H]
    last = hidden[torch.arange(len(batch), device=device), mask.sum(1) - 1]  # [N, H]
    return model.score(last).squeeze(-1).float()  # [N]


class RewardModelScorer:
    """The `rm` reward: `(prompts, responses) -> [RewardResult]`, batched."""

    def __init__(self, config: RMRewardConfig):
        from longrl.device import resolve_device
        from longrl.errors import ConfigError

        if not config.model:
            raise ConfigError("reward rm: set [reward.rm] model = DIR (a model from `longrl rm train`)")
        self.config = config
        self.model, self.tokenizer = load_rm(config.model, resolve_device(config.device))
        self.model.eval()

    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[RewardResult]:
        c = self.config
        inputs = [rm_input_ids(self.tokenizer, p.text, p.answer, r, c.max_tokens) for p, r in zip(prompts, responses)]
        logits: list[float] = []
        with torch.no_grad():
            for at in range(0, len(inputs), c.batch_size):
                logits += rm_logits(self.model, inputs[at:at + c.batch_size], self.tokenizer.pad_token_id).tolist()
        out = []
        for logit in logits:
            probability = 1 / (1 + math.exp(-logit)) if logit > -700 else 0.0
            score = {"probability": probability, "binary": float(probability >= c.threshold), "logit": logit}[c.output]
            out.append(RewardResult(score, {"rm_probability": probability, "rm_logit": logit}))
        return out


def rm_reward(**options) -> RewardModelScorer:
    return RewardModelScorer(RMRewardConfig(**options))


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


@dataclass
class LabelledResponse:
    question: str
    reference: str | None
    response: str
    label: int


def read_labelled(path: str | Path) -> list[LabelledResponse]:
    """Rows `{"prompt", "reference"?, "response", "label"}` of a JSONL file; a bad row names its
    file, line and field."""
    from longrl.data.sources import DataError, read_jsonl

    rows = []
    for where, row in read_jsonl(path, "reward-model data file"):
        for name in ("prompt", "response"):
            if not isinstance(row.get(name), str):
                raise DataError(f"{path}, {where}: field {name!r} must be a string")
        if row.get("label") not in (0, 1, True, False):
            raise DataError(f"{path}, {where}: field 'label' must be 0 or 1, got {row.get('label')!r}")
        reference = row.get("reference")
        if reference is not None and not isinstance(reference, str):
            raise DataError(f"{path}, {where}: field 'reference' must be a string when given")
        rows.append(LabelledResponse(row["prompt"], reference, row["response"], int(row["label"])))
    return rows


def label_responses(config, show_progress: bool = True) -> dict[str, float]:
    """`longrl rm label` (an `RMLabelConfig`): sample `sample.n` responses of the policy to each of
    `sample.num_prompts` prompts of the chosen split, label each by the `reward` section (1 when the
    response stopped by itself with reward 1.0), and write them as rows `longrl rm train` reads."""
    from longrl.data.sources import load_sources
    from longrl.long2short import sample_groups
    from longrl.models import load_policy
    from longrl.rewards.registry import build_rewards
    from longrl.rollout.engine import HFEngine

    from longrl.errors import ConfigError

    if config.sample.samples_file:
        raise ConfigError("rm label samples anew: sample.samples_file is for shortest-rs and dpo; leave it ''")
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    sources = config.data.train if config.split == "train" else config.data.eval
    pool = load_sources(sources, config.data.on_error, config.world)
    prompts = random.Random(config.seed).sample(pool, min(config.sample.num_prompts, len(pool)))
    model, tokenizer = load_policy(config.model.path, config.model.dtype)
    engine = HFEngine(model, tokenizer, batch_size=config.sample.batch_size, seed=config.seed)
    groups = sample_groups(engine, tokenizer, prompts, build_rewards(config.reward), config.sample)
    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    labels = []
    with out.open("w") as f:
        for prompt, group in zip(prompts, groups):
            for r in group["responses"]:
                labels.append(int(r["correct"]))
                f.write(json.dumps({"prompt": prompt.text, "reference": prompt.answer, "response": r["text"],
                                    "label": labels[-1], "finish_reason": r["finish_reason"],
                                    "tokens": r["tokens"]}) + "\n")
    return {"label/prompts": float(len(prompts)), "label/rows": float(len(labels)),
            "label/positive": sum(labels) / max(len(labels), 1)}


def split_labelled(config) -> tuple[list[LabelledResponse], list[LabelledResponse]]:
    """(training rows, held-out rows) of a job with `data`, `eval_data`, `eval_fraction`, `seed`:
    `eval_data` when given, else a seeded `eval_fraction` of `data`."""
    from longrl.errors import ConfigError

    rows = read_labelled(config.data)
    if config.eval_data:
        held = read_labelled(config.eval_data)
    else:
        rows = rows[:]
        random.Random(config.seed).shuffle(rows)
        cut = int(len(rows) * (1 - config.eval_fraction))
        rows, held = rows[:cut], rows[cut:]
    if not rows or not held:
        raise ConfigError(f"{config.data} gives {len(rows)} training and {len(held)} held-out rows; need both "
                          "(more rows, eval_fraction, or eval_data)")
    return rows, held


def rm_accuracy(model, tokenizer, rows: Sequence[LabelledResponse], batch_size: int, max_tokens: int) -> float:
    """Share of `rows` whose predicted label (logit > 0) equals the label."""
    model.eval()
    right = 0
    with torch.no_grad():
        for at in range(0, len(rows), batch_size):
            part = rows[at:at + batch_size]
            ids = [rm_input_ids(tokenizer, r.question, r.reference, r.response, max_tokens) for r in part]
            predicted = rm_logits(model, ids, tokenizer.pad_token_id) > 0
            right += sum(int(p) == r.label for p, r in zip(predicted.tolist(), part))
    return right / max(len(rows), 1)


def train_rm(config, show_progress: bool = True) -> dict[str, float]:
    """`longrl rm train` (an `RMTrainConfig`): returns the last epoch's metrics."""
    from tqdm import tqdm

    from longrl.config import dump_toml
    from longrl.device import resolve_device

    rows, held = split_labelled(config)
    torch.manual_seed(config.seed)
    model, tokenizer = load_rm(config.model.path, resolve_device(config.device))
    run_dir = Path(config.out_dir) / config.name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.toml").write_text(dump_toml(config))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    encoded = [rm_input_ids(tokenizer, r.question, r.reference, r.response, config.max_tokens) for r in rows]
    rng = random.Random(config.seed)
    metrics: dict[str, float] = {"rm/start_accuracy": rm_accuracy(model, tokenizer, held, config.batch_size,
                                                                   config.max_tokens)}
    steps = config.epochs * math.ceil(len(rows) / config.batch_size)
    bar = tqdm(total=steps, desc="rm", disable=not show_progress)
    with (run_dir / "metrics.jsonl").open("w") as log:
        log.write(json.dumps({"epoch": 0, **metrics}) + "\n")
        for epoch in range(1, config.epochs + 1):
            model.train()
            order = list(range(len(rows)))
            rng.shuffle(order)
            start, losses = time.perf_counter(), []
            for at in range(0, len(order), config.batch_size):
                chosen = order[at:at + config.batch_size]
                logits = rm_logits(model, [encoded[i] for i in chosen], tokenizer.pad_token_id)
                labels = torch.tensor([float(rows[i].label) for i in chosen], device=logits.device)
                loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(loss.item())
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            metrics = {"rm/loss": sum(losses) / len(losses), "perf/epoch_s": time.perf_counter() - start,
                       "rm/accuracy": rm_accuracy(model, tokenizer, held, config.batch_size, config.max_tokens),
                       "rm/train_rows": float(len(rows)), "rm/held_out_rows": float(len(held))}
            log.write(json.dumps({"epoch": epoch, **metrics}) + "\n")
            log.flush()
    bar.close()
    model.save_pretrained(run_dir / "final")
    tokenizer.save_pretrained(run_dir / "final")
    return metrics
