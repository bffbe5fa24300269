"""Curation steps that read text alone: duplicates, contamination, guessable question types.

The rules are described in `longrl.data.curate`'s docstring.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from longrl.errors import LongrlError
from longrl.types import Prompt

BUCKETS = ("easy", "medium", "hard")
UNLABELLED = "unlabelled"


class CurateError(LongrlError, ValueError):
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

