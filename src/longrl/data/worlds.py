"""The tiny world: procedural, verifiable reasoning tasks sized for models that train on a CPU.

Every task comes with a step-by-step chain-of-thought trace (for the SFT warm-up, SPEC §2) and
an exact verifier (the `world` reward). Task families and what their difficulty level means:

    add    a + b, both operands `level` digits, column by column with carries
    sub    a - b with a >= b, both `level` digits, column by column with borrows
    mul    a * d, `a` of `level` digits times one digit, column by column with carries
    chain  the sum of `level` numbers of 1-2 digits, one partial sum per line
    rep    s + a*n: the digit `a` added `n = level` times to the 4-digit `s`, one running total
           per line with the additions left (`r`); at levels 64+ a trace runs to 1,000+ characters
    count  s + 1*n: counting up from the 4-digit `s` one at a time, `n = level` times, one count
           per line with the ones left (`r`); at levels 100+ a trace runs to 1,000+ characters

and the visual tasks, whose question is in the prompt's one image (`visual_world.py`):

    add_img    the image shows two numbers of `level` digits; "Add the two numbers in the
               image."; the `add` trace (levels 1-10)
    count_img  the image shows `level` to 2*`level` red squares and fewer blue ones; "How many
               more red squares than blue squares?"; `red 5`, `blue 3`, `5-3=2` (levels 1-4)
    text_img   the image shows the `add` question, `347+285`; "Solve the problem in the
               image."; the `add` trace (levels 1-5)

A trace ends with one answer line `A: <number>`; a *direct* trace is that line alone, with no chain
of thought. For example, `347+285`:

    7+5+0=12 c1
    4+8+1=13 c1
    3+2+1=6 c0
    A: 632

`1095+7*3`:

    1095+7=1102 r2
    1102+7=1109 r1
    1109+7=1116 r0
    A: 1116

and `1095+1*3` (the long-context world runs `count` at levels 100-115, docs/long_context.md):

    1095 r003
    1096 r002
    1097 r001
    1098 r000
    A: 1098

Why `rep` is the long task: every line depends only on the line before it and on `a` (the additions
left count down, so stopping is decided locally), at fixed distances back; tasks whose lines must
index into a long question (the i-th term of a long `chain`, the i-th digit of a 90-digit sum)
need a lookup whose distance changes from line to line. Errors compound over the 64-72 lines, and
a small model can lower its loss by continuing the digit pattern of the lines above instead of
adding; what the CPU warm-up reached is in docs/long_context.md. `count` is `rep` with `a = 1` in
a line of 10 characters instead of 16, so 100+ lines fit in 1,000+ tokens: each line copies the
one above with one more and one fewer, and the first copies the question. `configs/long_sft.toml`
brings the 2-layer tiny model to a training loss of 0.003 nats per token in 800 steps (~8M tokens)
and a held-out pass@1 above 0 at 1,000+ tokens, which `rep` never reached (docs/long_context.md).

Trace styles (`WorldConfig.trace_style`). `concise` is the trace above. `verbose` re-checks its work
the way a long chain of thought does (long2short, SPEC §7): each example draws a re-check rate p
uniformly from [0, 1]; every step is followed, with probability p, by a line that re-checks it, and
the answer is re-verified, with probability p, before the answer line:

    7+5+0=12 c1
    check 7+5+0=12 ok
    4+8+1=13 c1
    3+2+1=6 c0
    check 3+2+1=6 ok
    verify 347+285=632 ok
    A: 632

So correct traces of one problem differ in length, which is what the length reward and the
long2short methods choose between. The re-check pattern is a function of the problem text and the
world seed, never of the problem stream: a verbose world draws the same problems as a concise one.

Held-out prompts are the problems whose text hashes to 0 modulo `_HOLDOUT_MODULUS`; training
never draws them, so the split holds whatever the sizes and seeds. For a visual task the text
hashed is the problem's key (the numbers, or the grid of squares), which the prompt id names: its
visible text is the same for every problem.

The exact verifier of the answer line is the `world` reward (`rewards/world.py`); the tokenizer
and model a tiny world trains are built by `longrl.tiny`.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Sequence
from pathlib import Path

from longrl.config import ConfigError, WorldConfig
from longrl.data import visual_world
from longrl.data.visual_world import IMAGE_TASKS  # the question is in an image
from longrl.types import Prompt

TEXT_TASKS = ("add", "sub", "mul", "chain", "rep", "count")
TASKS = (*TEXT_TASKS, *IMAGE_TASKS)
_HOLDOUT_MODULUS = 10  # one problem in ten is reserved for evaluation


# ----------------------------------------------------------------------------------------------
# Tasks and traces
# ----------------------------------------------------------------------------------------------


def _digits(n: int, width: int) -> list[int]:
    """Least significant digit first, padded with zeros to `width`."""
    return [(n // 10**i) % 10 for i in range(width)]


def _add_trace(a: int, b: int) -> list[str]:
    width, carry, lines = max(len(str(a)), len(str(b))), 0, []
    for x, y in zip(_digits(a, width), _digits(b, width)):
        s = x + y + carry
        lines.append(f"{x}+{y}+{carry}={s} c{s // 10}")
        carry = s // 10
    return lines


def _sub_trace(a: int, b: int) -> list[str]:
    width, borrow, lines = len(str(a)), 0, []
    for x, y in zip(_digits(a, width), _digits(b, width)):
        d = x - y - borrow
        out = 1 if d < 0 else 0
        lines.append(f"{x}-{y}-{borrow}={d + 10 * out} b{out}")
        borrow = out
    return lines


def _mul_trace(a: int, d: int) -> list[str]:
    carry, lines = 0, []
    for x in _digits(a, len(str(a))):
        p = x * d + carry
        lines.append(f"{x}*{d}+{carry}={p} c{p // 10}")
        carry = p // 10
    return lines


def _chain_trace(terms: list[int]) -> list[str]:
    total, lines = terms[0], []
    for t in terms[1:]:
        lines.append(f"{total}+{t}={total + t}")
        total += t
    return lines


def _rep_trace(start: int, a: int, n: int) -> list[str]:
    left_width, total, lines = len(str(n - 1)), start, []
    for left in range(n - 1, -1, -1):
        lines.append(f"{total}+{a}={total + a} r{left:0{left_width}d}")
        total += a
    return lines


def _count_trace(start: int, n: int) -> list[str]:
    return [f"{start + k} r{n - k:03d}" for k in range(n + 1)]


def make_problem(task: str, level: int, rng: random.Random) -> tuple[str, int, list[str]]:
    """Draw one problem: (question text, answer, chain-of-thought lines).

    For an image task the text is the problem's key, which its image shows (`visual_world.py`).
    """
    if task in IMAGE_TASKS:
        return visual_world.make_problem(task, level, rng)
    lo, hi = 10 ** (level - 1), 10**level - 1
    if task == "add":
        a, b = rng.randint(lo, hi), rng.randint(lo, hi)
        return f"{a}+{b}", a + b, _add_trace(a, b)
    if task == "sub":
        a, b = sorted((rng.randint(lo, hi), rng.randint(lo, hi)), reverse=True)
        return f"{a}-{b}", a - b, _sub_trace(a, b)
    if task == "mul":
        a, d = rng.randint(lo, hi), rng.randint(2, 9)
        return f"{a}*{d}", a * d, _mul_trace(a, d)
    if task == "chain":
        terms = [rng.randint(1, 99) for _ in range(max(level, 2))]
        return "+".join(map(str, terms)), sum(terms), _chain_trace(terms)
    if task == "rep":
        # A 4-digit start keeps every total at 4 digits up to level 888 (1999 + 9*888 = 9991), so
        # every line of a trace has one length and each digit a step reads sits a fixed distance
        # back; with 2-digit starts (lines of varying length) the SFT loss stayed at ~1.4 nats per
        # character after ~1.5M tokens. A one-digit `a` makes most steps change only the last one
        # or two digits (a 2-digit `a` left the loss at ~0.7 after ~2M tokens).
        start, a = rng.randint(1000, 1999), rng.randint(2, 9)
        return f"{start}+{a}*{level}", start + a * level, _rep_trace(start, a, level)
    if task == "count":
        if level > 999:  # the ones left are written in 3 digits; totals stay at 4 up to 1999 + 999
            raise ConfigError(f"world: count runs to level 999, not {level}")
        start = rng.randint(1000, 1999)
        return f"{start}+1*{level}", start + level, _count_trace(start, level)
    raise ConfigError(f"unknown task {task!r}; tasks are {', '.join(TASKS)}")


def format_trace(lines: Sequence[str], answer: int) -> str:
    return "\n".join([*lines, f"A: {answer}"])


def check_line(line: str) -> str:
    """The re-check of one step line: the step's equation stated again, `7+5+0=12 c1` -> `check 7+5+0=12 ok`."""
    return f"check {line.split(' ')[0]} ok"


def verbose_lines(question: str, lines: Sequence[str], answer: int, rng: random.Random) -> list[str]:
    """`lines` with re-checks and a final re-verification at a rate p ~ U(0, 1) drawn from `rng`."""
    rate, out = rng.random(), []
    for line in lines:
        out.append(line)
        if rng.random() < rate:
            out.append(check_line(line))
    if rng.random() < rate:
        out.append(f"verify {question}={answer} ok")
    return out


def is_held_out(text: str) -> bool:
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % _HOLDOUT_MODULUS == 0


class World:
    """Train and held-out prompts of a `WorldConfig`, each with its reference trace.

    A prompt of an image task carries its one image as PNG bytes in `Prompt.images`; its id
    names the problem's key (`add_img:347+285`), its text is the task's fixed question.
    """

    def __init__(self, config: WorldConfig):
        for task in config.tasks:
            if task not in TASKS:
                raise ConfigError(f"world.tasks: unknown task {task!r}; choose from {TASKS}")
        if not 1 <= config.min_level <= config.max_level:
            raise ConfigError("world: need 1 <= min_level <= max_level")
        if config.trace_style not in ("concise", "verbose"):
            raise ConfigError(f"world.trace_style is {config.trace_style!r}: choose 'concise' or 'verbose'")
        self.config = config

    def _draw(self, rng: random.Random, held_out: bool) -> Prompt:
        while True:
            task = rng.choice(self.config.tasks)
            level = rng.randint(self.config.min_level, self.config.max_level)
            text, answer, lines = make_problem(task, level, rng)
            if is_held_out(text) == held_out:
                span = max(self.config.max_level - self.config.min_level, 1)
                if self.config.trace_style == "verbose":
                    asked = visual_world.expression(task, text) if task in IMAGE_TASKS else text
                    checks = random.Random(f"verbose:{self.config.seed}:{text}")
                    lines = verbose_lines(asked, lines, answer, checks)
                question, images = text, []
                if task in IMAGE_TASKS:  # the text is the key; the image shows it
                    question, images = visual_world.QUESTIONS[task], [visual_world.render(task, text)]
                return Prompt(
                    id=f"{task}:{text}", text=question, answer=str(answer),
                    tags=[f"task:{task}", f"level:{level}"],
                    difficulty=(level - self.config.min_level) / span, source="world",
                    meta={"trace": format_trace(lines, answer), "direct": format_trace([], answer)},
                    images=images)

    def train_prompts(self, n: int, seed_offset: int = 0) -> list[Prompt]:
        """`n` training prompts (repeats possible for small spaces), never held-out ones."""
        rng = random.Random(f"train:{self.config.seed}:{seed_offset}")
        return [self._draw(rng, held_out=False) for _ in range(n)]

    def eval_prompts(self) -> list[Prompt]:
        """The held-out split: `eval_size` distinct problems."""
        rng, seen, out = random.Random(f"eval:{self.config.seed}"), set(), []
        for _ in range(100 * self.config.eval_size):
            if len(out) == self.config.eval_size:
                break
            p = self._draw(rng, held_out=True)
            if p.id not in seen:
                seen.add(p.id)
                out.append(p)
        return out
