"""Offline curation of the RL prompt set (SPEC §1, paper §2.1): `longrl curate`.

Each step is a function that takes prompts and returns a `StepResult`: the prompts it kept
(copies, never the caller's objects mutated), a `Drop` record for every prompt it removed (which
step, which rule, the evidence) and a few flat stats. `curate` runs the steps a `CurateConfig`
names, in its order; `build_report` turns the outcome into counts per tag and difficulty bucket
and dropped counts per reason with examples.

The steps and their rules:

- `exact_dedupe`: same text after Unicode NFKC and whitespace collapse (case kept: `X` and `x`
  differ in math). The first occurrence stays.
- `near_dedupe`: MinHash LSH (datasketch) over word (or character) shingles of the lower-cased
  text; a later prompt whose estimated Jaccard similarity to a kept one reaches the threshold is
  dropped. **ours**, for template-generated problems (reasoning-gym, GSM-symbolic), which share
  almost every shingle and differ in a short slot: shingles in more than `common_share` of the
  prompts (and in more than 3) are boilerplate and left out of the similarity, and the two
  prompts must also contain the same numbers in the same order.
- `decontaminate`: a training prompt is dropped when one of its word n-grams (n = 13 by default,
  tokens are lower-cased words and single punctuation marks) appears in an evaluation prompt; a
  prompt shorter than n tokens is dropped when all of it appears in one. n-grams common to an
  eval set (same boilerplate rule) are ignored. For short templated questions a template n-gram
  plus one slot value can still reach 13 tokens; whole-question matching (n above the question
  length) is then the right test (configs/curate_gym.toml).
- `exclude_guessable` (answers easy to guess, SPEC §1), rules tried in this order:
  multiple choice: the question lists options `(A) (B)` or lines `A. / B)` (capitals, both A
  and B), says "which of the following" or "answer choices", or the reference is a lone capital
  letter A-E; true/false: the reference is true/false/yes/no (any case, in `\\text{}` or `$`), or
  the question asks "true or false" / "yes or no"; proof: the question says prove, proof, "show
  that" or "demonstrate that".
- `easy_to_hack`: the question is wrapped in a template that demands the final answer alone and
  the response is forced to start with the answer (an answer format per reward, e.g. `A: {guess}`
  for the tiny world, `<answer>{guess}</answer>` for reasoning-gym: the text before `{guess}` is
  forced, the first line the model writes is the guess), with a short token cap; if any of
  `guesses` (8) guesses is correct the prompt is dropped. **ours**: the forced start, since a
  template alone does not stop a small model from reasoning; template and formats are configurable.
- `pass_rate`: `n` samples (10) at temperature T (1.0) with the chain of thought; difficulty =
  1 - correct / n, stored on `Prompt.difficulty` (and `meta["pass_rate"]`), bucketed into easy /
  medium / hard by two edges. `filter_difficulty` then drops solved prompts (pass rate 1) and
  those outside [min_difficulty, max_difficulty].
- `balance_by_tag`: caps each tag group (`max_per_tag`) and/or keeps target shares among named
  groups; which prompts of a group stay is a seeded draw.

Correctness in the model-based steps comes from the reward registry: `RewardRouter` picks each
prompt's reward (the loader's `meta["reward"]`, else the first rule whose key is the prompt's
source, source family or one of its tags), and a response is correct when the reward reaches
`correct_threshold`. Reward errors are counted, not raised (`rewards/registry.score_batch`).

Order of the default pipeline: text rules first (free), then the easy-to-hack filter (8 short
guesses), then the pass rate (10 long samples) on what is left, then balancing on the final set.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import time
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longrl.types import GenerationRequest, Prompt, SamplingParams

BUCKETS = ("easy", "medium", "hard")
UNLABELLED = "unlabelled"


class CurateError(ValueError):
    """A curation setting or prompt that cannot be used; the message says where and what to do."""


@dataclass
class Drop:
    """One prompt a step removed: the step, the rule (`reason`) and the evidence (`detail`)."""

    id: str
    step: str
    reason: str
    detail: str
    text: str


@dataclass
class StepResult:
    kept: list[Prompt]
    dropped: list[Drop] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)  # numbers; model steps add reward reasons, first error


def _drop(prompt: Prompt, step: str, reason: str, detail: str) -> Drop:
    return Drop(prompt.id, step, reason, detail, prompt.text)


# ----------------------------------------------------------------------------------------------
# Text rules: duplicates, contamination, guessable types
# ----------------------------------------------------------------------------------------------

_TOKEN = re.compile(r"\w+|[^\w\s]")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def normalize_text(text: str) -> str:
    """NFKC, whitespace runs collapsed to one space, ends stripped (case kept)."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


def text_tokens(text: str) -> list[str]:
    """Lower-cased words and single punctuation marks: `What is 2+2?` -> what is 2 + 2 ?"""
    return _TOKEN.findall(normalize_text(text).lower())


def exact_dedupe(prompts: Sequence[Prompt]) -> StepResult:
    """Drop every prompt whose normalized text an earlier prompt already has."""
    first: dict[str, Prompt] = {}
    kept, dropped = [], []
    for p in prompts:
        key = normalize_text(p.text)
        if key in first:
            other = first[key]
            detail = f"same text as {other.id}"
            if other.answer != p.answer:
                detail += f" (answers differ: {other.answer!r} kept, {p.answer!r} dropped)"
            dropped.append(_drop(p, "exact_dedupe", "exact_duplicate", detail))
        else:
            first[key] = p
            kept.append(p)
    return StepResult(kept, dropped)


def shingles(text: str, kind: str = "word", size: int = 3) -> set[str]:
    """Word or character `size`-grams of the lower-cased text; a shorter text is one shingle."""
    if kind == "word":
        tokens = text_tokens(text)
        if len(tokens) <= size:
            return {" ".join(tokens)}
        return {" ".join(tokens[i:i + size]) for i in range(len(tokens) - size + 1)}
    if kind == "char":
        s = normalize_text(text).lower()
        if len(s) <= size:
            return {s}
        return {s[i:i + size] for i in range(len(s) - size + 1)}
    raise CurateError(f"shingle kind {kind!r}: choose `word` or `char`")


_COMMON_MIN_PROMPTS = 3  # text in this many prompts or fewer is never boilerplate


def common_items(sets: Sequence[set], share: float) -> set:
    """Boilerplate: items (shingles, n-grams) in more than `share` of the sets and in more than 3."""
    counts = Counter(x for items in sets for x in items)
    limit = max(share * len(sets), _COMMON_MIN_PROMPTS)
    return {x for x, c in counts.items() if c > limit}


def near_dedupe(prompts: Sequence[Prompt], threshold: float = 0.8, num_perm: int = 128,
                shingle: str = "word", shingle_size: int = 3, same_numbers: bool = True,
                common_share: float = 0.1, seed: int = 1) -> StepResult:
    """Drop prompts whose MinHash Jaccard estimate to an earlier kept prompt is >= `threshold`.

    Shingles common to many prompts (`common_items`: template text, standing instructions) are
    left out first, so the similarity is that of what distinguishes the problems (all shingles
    when nothing else is left). LSH proposes candidates (false positives and, rarely, misses);
    each is checked with the estimated Jaccard of the two signatures and, with `same_numbers`,
    by the numbers the two texts contain.
    """
    from datasketch import MinHash, MinHashLSH

    sets = [shingles(p.text, shingle, shingle_size) for p in prompts]
    common = common_items(sets, common_share)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    signatures: dict[str, tuple[MinHash, Prompt, list[str]]] = {}
    kept, dropped, spared = [], [], 0
    for index, (p, full) in enumerate(zip(prompts, sets)):
        sig = MinHash(num_perm=num_perm, seed=seed)
        sig.update_batch([s.encode() for s in (full - common) or full])
        numbers = _NUMBER.findall(p.text)
        match, similar = None, False
        for key in lsh.query(sig):
            other_sig, other, other_numbers = signatures[key]
            similarity = sig.jaccard(other_sig)
            if similarity < threshold:
                continue
            similar = True
            if same_numbers and numbers != other_numbers:
                continue
            if match is None or similarity > match[0]:
                match = (similarity, other)
        if match is not None:
            dropped.append(_drop(p, "near_dedupe", "near_duplicate",
                                 f"Jaccard ~{match[0]:.2f} with {match[1].id}"))
            continue
        spared += similar
        signatures[str(index)] = (sig, p, numbers)
        lsh.insert(str(index), sig)
        kept.append(p)
    return StepResult(kept, dropped, {"common_shingles": len(common), "kept_similar_with_other_numbers": spared})


def _ngrams(tokens: list[str], n: int) -> set[tuple[str, ...]]:
    if len(tokens) < n:
        return {tuple(tokens)} if tokens else set()
    return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


def decontaminate(prompts: Sequence[Prompt], eval_sets: Mapping[str, Sequence[Prompt]],
                  n: int = 13, common_share: float = 0.1) -> StepResult:
    """Drop training prompts that share an n-gram (or, if shorter than n, all of it) with an eval prompt.

    An n-gram common to an eval set (`common_items` over that set's prompts: its instructions or
    template) is not evidence of contamination and is ignored.
    """
    if n < 1:
        raise CurateError(f"decontamination n-gram size is {n}: give a positive size (13 is usual)")
    tokenized = {name: [(e.id, text_tokens(e.text)) for e in items] for name, items in eval_sets.items()}
    indexes: dict[int, tuple[dict[tuple[str, ...], tuple[str, str]], int]] = {}

    def index(m: int) -> dict[tuple[str, ...], tuple[str, str]]:  # m-gram -> (eval set, prompt id)
        if m not in indexes:
            table, ignored = {}, 0
            for name, items in tokenized.items():
                grams = [_ngrams(tokens, m) if len(tokens) >= m else set() for _, tokens in items]
                common = common_items(grams, common_share)
                ignored += len(common)
                for (eid, _), found in zip(items, grams):
                    for gram in found - common:
                        table.setdefault(gram, (name, eid))
            indexes[m] = (table, ignored)
        return indexes[m][0]

    kept, dropped = [], []
    for p in prompts:
        tokens = text_tokens(p.text)
        m = min(n, len(tokens))
        table = index(m) if m else {}
        hit = next(((g, table[g]) for g in _ngrams(tokens, m) if g in table), None)
        if hit is None:
            kept.append(p)
            continue
        gram, (name, eid) = hit
        dropped.append(_drop(p, "decontaminate", "contaminated",
                             f"{m}-gram {' '.join(gram)!r} also in eval set {name!r} ({eid})"))
    index(n)
    return StepResult(kept, dropped, {"eval_prompts": sum(map(len, tokenized.values())),
                                      "common_eval_ngrams": indexes[n][1]})


_OPTION_PAREN = re.compile(r"\(([A-E])\)")
_OPTION_LINE = re.compile(r"(?m)^\s*([A-E])[.)]\s")
_CHOICE_PHRASE = re.compile(r"\b(which of the following|answer choices|choose (?:the|one))\b", re.IGNORECASE)
_LETTER_ANSWER = re.compile(r"^\(?([A-E])\)?\.?$")
_TF_ANSWERS = {"true", "false", "yes", "no"}
_TF_PHRASE = re.compile(r"\b(true or false|yes or no|true/false)\b", re.IGNORECASE)
_PROOF_PHRASE = re.compile(r"\b(prove|proofs?|show that|demonstrate that)\b", re.IGNORECASE)


def _bare_answer(answer: str | None) -> str:
    """The reference without LaTeX wrappers: `$\\text{Yes}$.` -> `yes`."""
    s = (answer or "").strip().strip("$").strip()
    s = re.sub(r"^\\(?:text|textbf|mathrm)\{(.*)\}$", r"\1", s)
    return s.strip().rstrip(".").strip()


def multiple_choice_rule(p: Prompt) -> str | None:
    for pattern in (_OPTION_PAREN, _OPTION_LINE):
        letters = set(pattern.findall(p.text))
        if {"A", "B"} <= letters:
            return f"options {', '.join(sorted(letters))} listed in the question"
    if (m := _CHOICE_PHRASE.search(p.text)) is not None:
        return f"question says {m.group(0)!r}"
    if _LETTER_ANSWER.match(_bare_answer(p.answer)):
        return f"reference answer is a choice letter {p.answer!r}"
    return None


def true_false_rule(p: Prompt) -> str | None:
    if _bare_answer(p.answer).lower() in _TF_ANSWERS:
        return f"reference answer is {p.answer!r}"
    if (m := _TF_PHRASE.search(p.text)) is not None:
        return f"question says {m.group(0)!r}"
    return None


def proof_rule(p: Prompt) -> str | None:
    if (m := _PROOF_PHRASE.search(p.text)) is not None:
        return f"question says {m.group(0)!r}"
    return None


GUESSABLE_RULES: dict[str, Callable[[Prompt], str | None]] = {
    "multiple_choice": multiple_choice_rule, "true_false": true_false_rule, "proof": proof_rule}


def exclude_guessable(prompts: Sequence[Prompt], rules: Sequence[str] = tuple(GUESSABLE_RULES)) -> StepResult:
    """Drop question types whose answers are easy to guess; the first matching rule is the reason."""
    unknown = [r for r in rules if r not in GUESSABLE_RULES]
    if unknown:
        raise CurateError(f"unknown guessable rule(s) {unknown}; rules are {', '.join(GUESSABLE_RULES)}")
    kept, dropped = [], []
    for p in prompts:
        hit = next(((name, d) for name in rules if (d := GUESSABLE_RULES[name](p)) is not None), None)
        if hit is None:
            kept.append(p)
        else:
            dropped.append(_drop(p, "exclude_guessable", hit[0], hit[1]))
    return StepResult(kept, dropped)


# ----------------------------------------------------------------------------------------------
# Model-based steps: which reward judges a prompt, easy-to-hack guesses, pass rate
# ----------------------------------------------------------------------------------------------


def parse_pairs(items: Sequence[str], field_name: str) -> list[tuple[str, str]]:
    """`["key=value", ...]` -> pairs; an item without `=` is an error naming the config field."""
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
                          "rule of curate.reward_rules: add `SOURCE_OR_TAG=REWARD` there or set curate.default_reward")


class Judge:
    """Correctness of responses, each prompt scored by the reward its router names."""

    def __init__(self, reward_for: Callable[[Prompt], str], threshold: float = 1.0):
        self.reward_for, self.threshold = reward_for, threshold
        self._rewards: dict[str, Any] = {}

    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> tuple[list[bool], list[str], Counter]:
        """(correct per response, error messages of rewards that failed, the rewards' reasons counted)."""
        from longrl.rewards.registry import get_reward, score_batch

        groups: dict[str, list[int]] = defaultdict(list)
        for i, p in enumerate(prompts):
            groups[self.reward_for(p)].append(i)
        correct, errors, reasons = [False] * len(prompts), [], Counter()
        for name, idx in groups.items():
            if name not in self._rewards:
                self._rewards[name] = get_reward(name)
            results = score_batch({name: (self._rewards[name], 1.0)}, [prompts[i] for i in idx],
                                  [responses[i] for i in idx])
            for i, r in zip(idx, results):
                correct[i] = r.score >= self.threshold
                failed = f"{name}/error" in r.info
                if failed:
                    errors.append(f"{prompts[i].id}: {r.info[f'{name}/error']}")
                reason = r.info.get(f"{name}/reason") or ("error" if failed else "correct" if correct[i] else "wrong")
                reasons[f"{name}:{reason}"] += 1
        return correct, errors, reasons


def _ask(p: Prompt, text: str) -> str | list[dict[str, str]]:
    """The prompt's conversation (system message kept) with its last user message set to `text`."""
    if not p.messages:
        return text
    messages = [dict(m) for m in p.messages]
    last = max(i for i, m in enumerate(messages) if m["role"] == "user")
    messages[last]["content"] = text
    return messages


def _judged(prompts: Sequence[Prompt], n: int, engine, tokenizer, judge: Judge, params: SamplingParams,
            wrap: Callable[[Prompt], tuple[Any, str]], score_as: Callable[[Prompt, str], str], chunk: int,
            on_chunk: Callable[[int], None] | None, stats: dict[str, Any]):
    """Sample `n` completions per prompt, chunk by chunk, and judge them.

    Yields (prompt, its n scored texts, its n verdicts). `wrap(p) -> (what to encode, forced
    prefix)`: the prefix starts the response and conditions the generation; `score_as(p,
    completion)` is the text the reward sees. Fills `stats`: tokens, seconds, reward errors and
    the rewards' reasons (`reward_reasons`, e.g. `math:no_answer`), the first clue to a 0 pass rate.
    """
    from longrl.models import encode_prompt

    start = time.perf_counter()
    stats.update(generated_tokens=0, reward_errors=0)
    reasons: Counter = Counter()
    for part in _chunks(prompts, chunk):
        requests = []
        for p in part:
            question, prefix = wrap(p)
            prefix_ids = tokenizer.encode(prefix, add_special_tokens=False) if prefix else []
            ids = encode_prompt(tokenizer, question)
            requests += [GenerationRequest(ids, prefix_ids) for _ in range(n)]
        completions = engine.generate(requests, params)
        repeated = [p for p in part for _ in range(n)]
        texts = [score_as(p, tokenizer.decode(c.token_ids, skip_special_tokens=True))
                 for p, c in zip(repeated, completions)]
        correct, errors, found = judge(repeated, texts)
        reasons += found
        stats["generated_tokens"] += sum(len(c.token_ids) for c in completions)
        stats["reward_errors"] += len(errors)
        if errors:
            stats.setdefault("first_reward_error", errors[0])
        for i, p in enumerate(part):
            yield p, texts[i * n:(i + 1) * n], correct[i * n:(i + 1) * n]
        if on_chunk:
            on_chunk(len(part))
    stats["seconds"] = round(time.perf_counter() - start, 1)
    stats["reward_reasons"] = dict(reasons.most_common())


def _chunks(items: Sequence[Prompt], size: int):
    for start in range(0, len(items), max(size, 1)):
        yield items[start:start + max(size, 1)]


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
    wrap = lambda p: (_ask(p, template.replace("{question}", p.text)), fmt(p).partition("{guess}")[0])
    params = SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens)
    kept, dropped, stats = [], [], {}
    for p, texts, correct in _judged(prompts, guesses, engine, tokenizer, judge, params, wrap,
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


def difficulty_bucket(difficulty: float | None, edges: Sequence[float] = (0.3, 0.7)) -> str:
    """easy if d < edges[0], medium if d < edges[1], else hard; `unlabelled` without a label."""
    if difficulty is None:
        return UNLABELLED
    return "easy" if difficulty < edges[0] else "medium" if difficulty < edges[1] else "hard"


def filter_difficulty(prompts: Sequence[Prompt], min_difficulty: float = 0.0, max_difficulty: float = 1.0,
                      drop_solved: bool = True) -> StepResult:
    """Keep labelled prompts with min <= difficulty <= max (solved ones dropped if asked); unlabelled stay."""
    kept, dropped = [], []
    for p in prompts:
        d = p.difficulty
        if d is not None and drop_solved and d == 0.0:
            dropped.append(_drop(p, "pass_rate", "solved", "every sample was correct (pass rate 1.0)"))
        elif d is not None and d < min_difficulty:
            dropped.append(_drop(p, "pass_rate", "too_easy", f"difficulty {d:.2f} < min {min_difficulty}"))
        elif d is not None and d > max_difficulty:
            dropped.append(_drop(p, "pass_rate", "too_hard", f"difficulty {d:.2f} > max {max_difficulty}"))
        else:
            kept.append(p)
    return StepResult(kept, dropped)


# ----------------------------------------------------------------------------------------------
# Tag balance and the report
# ----------------------------------------------------------------------------------------------


def balance_key(p: Prompt, prefix: str = "") -> str | None:
    """The tag a prompt is balanced by: its first tag starting with `prefix` (None: not balanced)."""
    return next((t for t in p.tags if t.startswith(prefix)), None)


def balance_by_tag(prompts: Sequence[Prompt], max_per_tag: int = 0, target_shares: Mapping[str, float] | None = None,
                   prefix: str = "", seed: int = 0) -> StepResult:
    """Cap each tag group and/or keep `target_shares` among the named groups; order is preserved.

    Shares are relative weights among the named groups that have prompts: the largest set that
    meets them exactly is kept. Prompts with no tag matching `prefix`, and groups that the shares
    do not name, are only subject to the cap.
    """
    groups: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        if (key := balance_key(p, prefix)) is not None:
            groups[key].append(i)
    quota = {k: len(v) for k, v in groups.items()}
    shares = {k: w for k, w in (target_shares or {}).items() if w > 0 and quota.get(k)}
    if shares:
        total = sum(shares.values())
        size = min(quota[k] * total / w for k, w in shares.items())  # largest set meeting every share
        for k, w in shares.items():
            quota[k] = int(size * w / total + 1e-9)
    if max_per_tag > 0:
        quota = {k: min(q, max_per_tag) for k, q in quota.items()}
    rng, removed = random.Random(seed), {}
    for k, idx in groups.items():
        if quota[k] < len(idx):
            for i in rng.sample(idx, len(idx) - quota[k]):
                removed[i] = f"tag {k!r}: kept {quota[k]} of {len(idx)}"
    kept = [p for i, p in enumerate(prompts) if i not in removed]
    dropped = [_drop(prompts[i], "balance", "balance", d) for i, d in sorted(removed.items())]
    return StepResult(kept, dropped)


def tag_report(prompts: Sequence[Prompt], edges: Sequence[float] = (0.3, 0.7)) -> dict[str, Any]:
    """Counts and shares per tag, difficulty buckets overall and per tag, mean difficulty."""
    per_tag: dict[str, Counter] = defaultdict(Counter)
    buckets: Counter = Counter()
    for p in prompts:
        b = difficulty_bucket(p.difficulty, edges)
        buckets[b] += 1
        for t in dict.fromkeys(p.tags or ["(untagged)"]):
            per_tag[t][b] += 1
    labelled = [p.difficulty for p in prompts if p.difficulty is not None]
    total = len(prompts)
    tags = {t: {"count": sum(c.values()), "share": round(sum(c.values()) / max(total, 1), 4),
                "buckets": {b: c[b] for b in (*BUCKETS, UNLABELLED) if c[b]}}
            for t, c in sorted(per_tag.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))}
    return {"total": total, "buckets": {b: buckets[b] for b in (*BUCKETS, UNLABELLED) if buckets[b]},
            "mean_difficulty": round(sum(labelled) / len(labelled), 4) if labelled else None, "tags": tags}


# ----------------------------------------------------------------------------------------------
# The pipeline, its report, and `longrl curate`
# ----------------------------------------------------------------------------------------------


@dataclass
class Curation:
    """What `curate` did: the curated prompts and each step's result, in order."""

    prompts: list[Prompt]
    steps: list[tuple[str, int, StepResult]]  # (step, prompts it received, its result)
    labelled: list[Prompt] | None = None  # every prompt the pass-rate step labelled, before filtering


def _shares(items: Sequence[str]) -> dict[str, float]:
    return {k: float(v) for k, v in parse_pairs(items, "target_shares")}


def curate(prompts: Sequence[Prompt], eval_sets: Mapping[str, Sequence[Prompt]], config, engine=None,
           tokenizer=None, on_chunk: Callable[[str, int, int], None] | None = None) -> Curation:
    """Run `config.steps` (a `CurateConfig`) in order; `engine`/`tokenizer` serve the model steps.

    `on_chunk(step, prompts_done, prompts_in_step)` is called as the model steps progress.
    """
    c = config
    judge = Judge(RewardRouter(parse_pairs(c.reward_rules, "reward_rules"), c.default_reward),
                  c.correct_threshold)
    tick = (lambda step, total: (lambda k: on_chunk(step, k, total))) if on_chunk else (lambda *_: None)
    current, steps, labelled = list(prompts), [], None
    for step in c.steps:
        if step in ("easy_to_hack", "pass_rate") and engine is None:
            raise CurateError(f"step {step!r} samples from a model: set model.path, or remove it from steps")
        received = len(current)
        if step == "exact_dedupe":
            result = exact_dedupe(current)
        elif step == "near_dedupe":
            result = near_dedupe(current, c.near_threshold, c.near_num_perm, c.near_shingle,
                                 c.near_shingle_size, c.near_same_numbers, c.common_share)
        elif step == "decontaminate":
            result = decontaminate(current, eval_sets, c.ngram, c.common_share)
        elif step == "exclude_guessable":
            result = exclude_guessable(current, c.guessable_rules)
        elif step == "easy_to_hack":
            result = easy_to_hack(current, engine, tokenizer, judge, c.guesses, c.hack_template,
                                  dict(parse_pairs(c.hack_formats, "hack_formats")), c.hack_max_new_tokens,
                                  c.hack_temperature, c.chunk_prompts, tick(step, received))
        elif step == "pass_rate":
            labels = pass_rate(current, engine, tokenizer, judge, c.n_samples, c.rollout.temperature,
                               c.rollout.top_p, c.rollout.max_new_tokens, c.chunk_prompts, tick(step, received))
            labelled = labels.kept
            result = filter_difficulty(labelled, c.min_difficulty, c.max_difficulty, c.drop_solved)
            result.stats = labels.stats
        elif step == "balance":
            result = balance_by_tag(current, c.max_per_tag, _shares(c.target_shares), c.balance_tag_prefix, c.seed)
        else:
            raise CurateError(f"unknown curation step {step!r}")
        steps.append((step, received, result))
        current = result.kept
    return Curation(current, steps, labelled)


def build_report(loaded: Sequence[Prompt], curation: Curation, config) -> dict[str, Any]:
    """Counts per tag and difficulty bucket before and after, and every drop grouped by reason."""
    edges = tuple(config.bucket_edges)
    reasons: dict[str, dict[str, Any]] = {}
    for _, _, result in curation.steps:
        for d in result.dropped:
            entry = reasons.setdefault(d.reason, {"step": d.step, "count": 0, "examples": []})
            entry["count"] += 1
            if len(entry["examples"]) < config.report_examples:
                entry["examples"].append({"id": d.id, "text": d.text[:160], "detail": d.detail})
    report = {
        "sources": list(config.sources), "eval_sources": list(config.eval_sources),
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
    if not config.sources:
        raise CurateError("no sources to curate: set curate `sources` (e.g. sources = [\"champ\"])")
    loaded = _load(config.sources, config.on_error, repeats_ok="exact_dedupe" in config.steps)
    if config.limit:
        loaded = loaded[:config.limit]
    eval_sets = {spec: _load([spec], config.on_error, repeats_ok=True) for spec in config.eval_sources}
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
