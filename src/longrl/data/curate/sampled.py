"""Curation steps that sample from a model: the easy-to-hack filter and difficulty by pass rate.

Both sample through `rollout.sample` and judge through `rewards.score`, like every other command.
Each prompt is judged by the reward its `RewardRouter` names (the rules are described in
`longrl.data.curate`'s docstring).
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from longrl.data.curate.text import CurateError, StepResult, _drop
from longrl.rewards.registry import get_reward
from longrl.rewards.score import score
from longrl.rollout.sample import sample
from longrl.types import Prompt, SamplingParams, Trajectory


def parse_pairs(items: Sequence[str], field_name: str) -> list[tuple[str, str]]:
    """`KEY=VALUE` strings as (key, value) pairs, in order."""
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CurateError(f"{field_name}: entry {item!r} must look like KEY=VALUE")
        pairs.append((key.strip(), value))
    return pairs


@dataclass
class RewardRouter:
    """Names the reward that judges a prompt: `meta["reward"]`, else the first matching rule."""

    rules: list[tuple[str, str]]  # (source, source family before ':', or tag) -> reward name
    default: str = ""

    def __call__(self, prompt: Prompt) -> str:
        if prompt.meta.get("reward"):
            return str(prompt.meta["reward"])
        family = prompt.source.split(":", 1)[0]
        for key, name in self.rules:
            if key in (prompt.source, family) or key in prompt.tags:
                return name
        if self.default:
            return self.default
        raise CurateError(f"prompt {prompt.id!r} (source {prompt.source!r}, tags {prompt.tags}) matches no "
                          "rule of judge.rules: add `SOURCE_OR_TAG=REWARD` there or set judge.default")


class Judge:
    """Correctness of trajectories, each prompt scored by the reward its router names."""

    def __init__(self, reward_for: Callable[[Prompt], str], threshold: float = 1.0,
                 options: Mapping[str, dict[str, Any]] | None = None):
        self.reward_for, self.threshold, self.options = reward_for, threshold, options or {}
        self._rewards: dict[str, Any] = {}

    def __call__(self, trajectories: Sequence[Trajectory]) -> tuple[list[bool], list[str], Counter]:
        """Score `trajectories` in place; (correct per trajectory, errors of rewards that failed,
        the rewards' reasons counted)."""
        groups: dict[str, list[Trajectory]] = defaultdict(list)
        for t in trajectories:
            groups[self.reward_for(t.prompt)].append(t)
        errors, reasons = [], Counter()
        for name, group in groups.items():
            if name not in self._rewards:
                self._rewards[name] = get_reward(name, **self.options.get(name, {}))
            score(group, {name: (self._rewards[name], 1.0)})
            for t in group:
                failed = f"{name}/error" in t.reward_info
                if failed:
                    errors.append(f"{t.prompt.id}: {t.reward_info[f'{name}/error']}")
                ok = t.reward >= self.threshold
                reason = t.reward_info.get(f"{name}/reason") or ("error" if failed else "correct" if ok else "wrong")
                reasons[f"{name}:{reason}"] += 1
        return [t.reward >= self.threshold for t in trajectories], errors, reasons


def _ask(p: Prompt, text: str) -> Prompt:
    """`p` asked as `text`: its last user message (system message kept) or its text replaced."""
    if not p.messages:
        return dataclasses.replace(p, text=text)
    messages = [dict(m) for m in p.messages]
    last = max(i for i, m in enumerate(messages) if m["role"] == "user")
    messages[last]["content"] = text
    return dataclasses.replace(p, text=text, messages=messages)


def _judged(prompts: Sequence[Prompt], n: int, engine, tokenizer, judge: Judge, params: SamplingParams,
            ask: Callable[[Prompt], tuple[Prompt, str]], score_as: Callable[[Prompt, str], str], chunk: int,
            on_chunk: Callable[[int], None] | None, stats: dict[str, Any]):
    """Sample `n` trajectories per prompt, chunk by chunk, and judge them.

    Yields (prompt, its n scored texts, its n verdicts). `ask(p) -> (prompt to sample, forced
    prefix)`: the prefix starts every response; `score_as(p, text)` is the text the reward sees.
    Fills `stats`: tokens, seconds, reward errors and the rewards' reasons (`reward_reasons`,
    e.g. `math:no_answer`), the first clue to a 0 pass rate.
    """
    start = time.perf_counter()
    stats.update(generated_tokens=0, reward_errors=0)
    reasons: Counter = Counter()
    for at in range(0, len(prompts), max(chunk, 1)):
        part = prompts[at:at + max(chunk, 1)]
        asked = [ask(p) for p in part]
        trajectories, _ = sample(engine, tokenizer, [q for q, _ in asked], n, params,
                                 prefixes=[prefix for _, prefix in asked])
        for i, t in enumerate(trajectories):
            t.prompt, t.text = part[i // n], score_as(part[i // n], t.text)
        correct, errors, found = judge(trajectories)
        reasons += found
        stats["generated_tokens"] += sum(t.num_response_tokens for t in trajectories)
        stats["reward_errors"] += len(errors)
        if errors:
            stats.setdefault("first_reward_error", errors[0])
        for i, p in enumerate(part):
            yield p, [t.text for t in trajectories[i * n:(i + 1) * n]], correct[i * n:(i + 1) * n]
        if on_chunk:
            on_chunk(len(part))
    stats["seconds"] = round(time.perf_counter() - start, 1)
    stats["reward_reasons"] = dict(reasons.most_common())


def guess_text(answer_format: str, completion: str) -> str:
    """The response a guess is scored as: `answer_format` with `{guess}` filled in.

    The model was forced to start with the text before `{guess}`; its guess is the first line of
    what it wrote, kept whole. The closing text (after `{guess}`) is appended when the guess did
    not close the answer itself: a closing brace when the braces do not balance (`\\boxed{` +
    `\\frac{1}{2}` -> `\\boxed{\\frac{1}{2}}`), any other closing text when it is absent
    (`<answer>` + `42` -> `<answer>42</answer>`).
    """
    prefix, _, suffix = answer_format.partition("{guess}")
    text = prefix + completion.lstrip().split("\n", 1)[0]
    if "}" in suffix:
        closed = text.count("{") <= text.count("}")
    else:
        closed = suffix in text[len(prefix):]
    return text if closed else text + suffix


def easy_to_hack(prompts: Sequence[Prompt], engine, tokenizer, judge: Judge, guesses: int = 8,
                 template: str = "{question}", formats: Mapping[str, str] | None = None,
                 max_new_tokens: int = 24, temperature: float = 1.0, chunk: int = 32,
                 on_chunk: Callable[[int], None] | None = None) -> StepResult:
    """Drop a prompt if any of `guesses` no-chain-of-thought answers is correct (SPEC §1).

    `template` wraps the question (`{question}` is replaced by the prompt text); `formats` maps a
    reward name to the answer format that reward reads, e.g. `<answer>{guess}</answer>`: the
    response is forced to start with the part before `{guess}`, so the model commits to an
    answer at once (`guess_text`). A reward without a format gets the first line as it is.
    """
    formats = formats or {}
    fmt = lambda p: formats.get(judge.reward_for(p), "{guess}")
    ask = lambda p: (_ask(p, template.replace("{question}", p.text)), fmt(p).partition("{guess}")[0])
    params = SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens)
    kept, dropped, stats = [], [], {}
    for p, texts, correct in _judged(prompts, guesses, engine, tokenizer, judge, params, ask,
                                     lambda p, c: guess_text(fmt(p), c), chunk, on_chunk, stats):
        hits = [t for t, ok in zip(texts, correct) if ok]
        if hits:
            dropped.append(_drop(p, "easy_to_hack", "easy_to_hack",
                                 f"{len(hits)}/{guesses} guesses correct, e.g. {hits[0][:80]!r}"))
        else:
            kept.append(p)
    return StepResult(kept, dropped, stats)


def pass_rate(prompts: Sequence[Prompt], engine, tokenizer, judge: Judge, n: int = 10,
              temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 256, chunk: int = 16,
              on_chunk: Callable[[int], None] | None = None) -> StepResult:
    """Label each prompt with difficulty = 1 - (correct of n samples) / n (SPEC §1); drops nothing.

    The label goes on copies: `difficulty`, and `meta["pass_rate"]` = {correct, n}.
    """
    params = SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
    labelled, stats = [], {}
    for p, _, correct in _judged(prompts, n, engine, tokenizer, judge, params, lambda p: (p, ""),
                                 lambda p, c: c, chunk, on_chunk, stats):
        c = sum(correct)
        labelled.append(dataclasses.replace(p, difficulty=(n - c) / n, meta={**p.meta, "pass_rate": {"correct": c, "n": n}}))
    return StepResult(labelled, [], stats)
