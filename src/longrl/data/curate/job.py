"""The curation job: run the configured steps in order, report, write the outputs (`longrl curate`)."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longrl.data.curate.sampled import Judge, RewardRouter, easy_to_hack, parse_pairs, pass_rate
from longrl.data.curate.select import balance_by_tag, filter_difficulty, tag_report
from longrl.data.curate.text import (BUCKETS, UNLABELLED, CurateError, StepResult, decontaminate, exact_dedupe,
                                     exclude_guessable, near_dedupe, normalize_text)
from longrl.types import Prompt


@dataclass
class Curation:
    """What `curate` did: the curated prompts and each step's result, in order."""

    prompts: list[Prompt]
    steps: list[tuple[str, int, StepResult]]  # (step, prompts it received, its result)
    labelled: list[Prompt] | None = None  # every prompt the pass-rate step labelled, before filtering


def _shares(items: Sequence[str]) -> dict[str, float]:
    return {k: float(v) for k, v in parse_pairs(items, "balance.target_shares")}


def _run_step(step: str, current: list[Prompt], eval_sets, c, engine, tokenizer, judge: Judge,
              tick: Callable[[int], None]) -> StepResult:
    """One step other than `pass_rate` (which also keeps the labels), by name."""
    if step == "exact_dedupe":
        return exact_dedupe(current)
    if step == "near_dedupe":
        n = c.near
        return near_dedupe(current, n.threshold, n.num_perm, n.shingle, n.shingle_size, n.same_numbers,
                           c.common_share)
    if step == "decontaminate":
        return decontaminate(current, eval_sets, c.ngram, c.common_share)
    if step == "exclude_guessable":
        return exclude_guessable(current, c.guessable_rules)
    if step == "easy_to_hack":
        h = c.hack
        return easy_to_hack(current, engine, tokenizer, judge, h.guesses, h.template,
                            dict(parse_pairs(h.formats, "hack.formats")), h.max_new_tokens, h.temperature,
                            c.chunk_prompts, tick)
    if step == "balance":
        b = c.balance
        return balance_by_tag(current, b.max_per_tag, _shares(b.target_shares), b.tag_prefix, c.seed)
    raise CurateError(f"unknown curation step {step!r}")


def curate(prompts: Sequence[Prompt], eval_sets: Mapping[str, Sequence[Prompt]], config, engine=None,
           tokenizer=None, on_chunk: Callable[[str, int, int], None] | None = None) -> Curation:
    """Run `config.steps` (a `CurateConfig`) in order; `engine`/`tokenizer` serve the model steps.

    `on_chunk(step, prompts_done, prompts_in_step)` is called as the model steps progress.
    """
    c = config
    judge = Judge(RewardRouter(parse_pairs(c.judge.rules, "judge.rules"), c.judge.default),
                  c.judge.correct_threshold, c.reward.options)
    tick = (lambda step, total: (lambda k: on_chunk(step, k, total))) if on_chunk else (lambda *_: None)
    current, steps, labelled = list(prompts), [], None
    for step in c.steps:
        if step in ("easy_to_hack", "pass_rate") and engine is None:
            raise CurateError(f"step {step!r} samples from a model: set model.path, or remove it from steps")
        received = len(current)
        if step == "pass_rate":
            labels = pass_rate(current, engine, tokenizer, judge, c.pass_rate.n_samples, c.rollout.temperature,
                               c.rollout.top_p, c.rollout.max_new_tokens, c.chunk_prompts, tick(step, received))
            labelled = labels.kept
            p = c.pass_rate
            result = filter_difficulty(labelled, p.min_difficulty, p.max_difficulty, p.drop_solved)
            result.stats = labels.stats
        else:
            result = _run_step(step, current, eval_sets, c, engine, tokenizer, judge, tick(step, received))
        steps.append((step, received, result))
        current = result.kept
    return Curation(current, steps, labelled)


def build_report(loaded: Sequence[Prompt], curation: Curation, config) -> dict[str, Any]:
    """Counts per tag and difficulty bucket before and after, and every drop grouped by reason."""
    edges = tuple(config.pass_rate.bucket_edges)
    reasons: dict[str, dict[str, Any]] = {}
    for _, _, result in curation.steps:
        for d in result.dropped:
            entry = reasons.setdefault(d.reason, {"step": d.step, "count": 0, "examples": []})
            entry["count"] += 1
            if len(entry["examples"]) < config.report_examples:
                entry["examples"].append({"id": d.id, "text": d.text[:160], "detail": d.detail})
    report = {
        "sources": list(config.data.train), "eval_sources": list(config.data.eval),
        "model": config.model.path or None,
        "loaded": len(loaded), "curated": len(curation.prompts),
        "steps": [{"step": name, "in": received, "kept": len(r.kept), "dropped": len(r.dropped), **r.stats}
                  for name, received, r in curation.steps],
        "dropped": {"total": sum(e["count"] for e in reasons.values()), "by_reason": reasons},
        "input": tag_report(loaded, edges),
        "output": tag_report(curation.prompts, edges),
    }
    if curation.labelled is not None:
        report["pass_rate"] = {"labelled": tag_report(curation.labelled, edges),
                               "histogram": dict(sorted(Counter(p.difficulty for p in curation.labelled).items()))}
    return report


def _tag_table(section: dict[str, Any], limit: int = 30) -> list[str]:
    cols = [*BUCKETS, UNLABELLED]
    lines = [f"| tag | count | share | {' | '.join(cols)} |", "|---|---|---|" + "---|" * len(cols)]
    for tag, row in list(section["tags"].items())[:limit]:
        cells = " | ".join(str(row["buckets"].get(b, 0)) for b in cols)
        lines.append(f"| `{tag}` | {row['count']} | {100 * row['share']:.1f}% | {cells} |")
    if len(section["tags"]) > limit:
        lines.append(f"| ... {len(section['tags']) - limit} more tags in report.json | | | |")
    total = " | ".join(str(section["buckets"].get(b, 0)) for b in cols)
    return [*lines, f"| **all** | {section['total']} | 100% | {total} |"]


def render_markdown(report: dict[str, Any]) -> str:
    """report.md: the step table, the drop reasons with examples, the tag and bucket tables."""
    sources = ", ".join(f"`{s}`" for s in report["sources"])
    evals = ", ".join(f"`{s}`" for s in report["eval_sources"]) or "none"
    out = ["# Curation report", "", f"Sources: {sources}; eval sets: {evals}; model: `{report['model']}`.", "",
           (f"**{report['loaded']} prompts loaded, {report['curated']} kept, "
            f"{report['dropped']['total']} dropped.**"), "", "## Steps", "",
           "| step | in | kept | dropped | notes |", "|---|---|---|---|---|"]
    for s in report["steps"]:
        notes = ", ".join(f"{k}: {v}" for k, v in s.items() if k not in ("step", "in", "kept", "dropped"))
        out.append(f"| {s['step']} | {s['in']} | {s['kept']} | {s['dropped']} | {notes} |")
    out += ["", "## Dropped, by reason", ""]
    for reason, entry in report["dropped"]["by_reason"].items():
        out.append(f"- **{reason}** ({entry['step']}): {entry['count']}")
        for ex in entry["examples"]:
            text = ex["text"].replace("\n", " ")[:100]
            out.append(f"  - `{ex['id']}`: {ex['detail']} — “{text}”")
    if "pass_rate" in report:
        hist = ", ".join(f"{d}: {n}" for d, n in report["pass_rate"]["histogram"].items())
        out += ["", "## Difficulty of every prompt the pass rate labelled (before filtering)", "",
                f"Difficulty (1 - pass rate) histogram: {hist}.", "", *_tag_table(report["pass_rate"]["labelled"])]
    out += ["", "## Curated set: tags and difficulty buckets", "", *_tag_table(report["output"]),
            "", "## Loaded set: tags", "", *_tag_table(report["input"])]
    return "\n".join(out) + "\n"


_COLUMNS = {"id", "text", "prompt", "question", "messages", "answer", "solution", "tests", "tags",
            "difficulty", "source", "meta"}  # what a `jsonl:` row reads as Prompt fields


def prompt_row(p: Prompt) -> dict[str, Any]:
    """A curated prompt as one JSONL object in the `Prompt` schema (read back by `jsonl:`).

    `meta` entries become columns of their own (the loader puts unknown columns in `meta`), except
    any whose name the loader would read as a field; those stay nested under `meta`.
    """
    fields = {k: v for k, v in dataclasses.asdict(p).items() if k != "meta" and v not in (None, [], {})}
    clashing = {k: v for k, v in p.meta.items() if k in _COLUMNS}
    return {**fields, **{k: v for k, v in p.meta.items() if k not in _COLUMNS},
            **({"meta": clashing} if clashing else {})}


def write_outputs(out_dir: str | Path, curation: Curation, report: dict[str, Any]) -> Path:
    """curated.jsonl, dropped.jsonl, report.json and report.md in `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "curated.jsonl").open("w") as f:
        for p in curation.prompts:
            f.write(json.dumps(prompt_row(p), ensure_ascii=False, default=str) + "\n")
    with (out / "dropped.jsonl").open("w") as f:
        for _, _, result in curation.steps:
            for d in result.dropped:
                f.write(json.dumps(dataclasses.asdict(d), ensure_ascii=False) + "\n")
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n")
    (out / "report.md").write_text(render_markdown(report))
    return out


def _load(specs: Sequence[str], on_error: str, repeats_ok: bool) -> list[Prompt]:
    """The prompts of `specs`; an id may repeat only for the same text (exact_dedupe drops it)."""
    from longrl.data.sources import load_source

    prompts, first = [], {}
    for spec in specs:
        for p in load_source(spec, on_error):
            other = first.setdefault(p.id, (spec, p))
            if other[1] is not p and (not repeats_ok or normalize_text(other[1].text) != normalize_text(p.text)):
                raise CurateError(f"prompt id {p.id!r} is used by two prompts (from {other[0]!r} and {spec!r})"
                                  + ("" if repeats_ok else " and exact_dedupe is not in steps")
                                  + ": give the rows distinct ids")
            prompts.append(p)
    return prompts


def run_curate(config, show_progress: bool = True) -> tuple[Path, dict[str, Any]]:
    """`longrl curate`: load the sources, run the steps, write the outputs; (output dir, report)."""
    import torch
    from tqdm import tqdm

    if config.threads:
        torch.set_num_threads(config.threads)
    data = config.data
    if not data.train:
        raise CurateError("no sources to curate: set data.train (e.g. [data] train = [\"champ\"])")
    loaded = _load(data.train, data.on_error, repeats_ok="exact_dedupe" in config.steps)
    if config.limit:
        loaded = loaded[:config.limit]
    eval_sets = {spec: _load([spec], data.on_error, repeats_ok=True) for spec in data.eval}
    engine = tokenizer = None
    if {"easy_to_hack", "pass_rate"} & set(config.steps):
        if not config.model.path:
            raise CurateError("steps easy_to_hack and pass_rate sample from a model: set model.path, "
                              "or leave them out of steps")
        from longrl.models import load_policy
        from longrl.rollout.engine import make_engine

        model, tokenizer = load_policy(config.model.path, config.model.dtype)
        engine = make_engine(config.rollout, model, tokenizer, seed=config.seed)
        del model  # the engine holds its own copy
    bars: dict[str, Any] = {}

    def on_chunk(step: str, done: int, total: int) -> None:
        if step not in bars:
            bars[step] = tqdm(total=total, desc=step, unit="prompt", disable=not show_progress, dynamic_ncols=True)
        bars[step].update(done)
        if bars[step].n >= total:
            bars[step].close()

    curation = curate(loaded, eval_sets, config, engine, tokenizer, on_chunk)
    report = build_report(loaded, curation, config)
    return write_outputs(Path(config.out_dir) / config.name, curation, report), report
