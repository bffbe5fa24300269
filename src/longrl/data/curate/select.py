"""Curation steps that select by label: difficulty range, tag balance; and the tag report."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from longrl.data.curate.text import BUCKETS, UNLABELLED, StepResult, _drop
from longrl.types import Prompt


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
