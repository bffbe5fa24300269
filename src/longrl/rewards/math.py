"""Math answer reward: extract the final answer, check it against the reference (SPEC §6).

SPEC §6 asks for a rule-based reward wherever an answer can be checked: 1 if the response's final
answer is mathematically equivalent to the reference (`a^2-4` equals `(a+2)(a-2)`), else 0. The
check is in three layers, each a small pure function:

1. `extract_answers`: the final answer(s) of a response, by priority: every `\\boxed{}` /
   `\\fbox{}` (nested braces allowed), else the last "Answer: ..." line or "the answer is ..."
   phrase, else a configurable fallback (the last number, the last `$...$` formula, or nothing).
2. `normalize_answer`: text-level clean-up both sides get before any parsing: `\\dfrac`, spacing
   commands, thousands separators, trailing period, degrees, `$`, units (`5 \\text{ cm}` -> `5`,
   remembering the unit), percent (`50\\%` -> `50`, remembering the sign), mixed numbers, plain
   text written as LaTeX (`pi/2` -> `\\pi/2`, `sqrt(2)`, `1e-7`), choice letters (`\\textbf{(B)}`).
3. `check_equivalence`: plain numbers are compared here; everything else goes to
   `math_verify.parse` + `math_verify.verify` (pinned, see the `math` extra) in a persistent
   worker subprocess with a per-check deadline (`math_worker.py`); a worker that overruns is
   killed and replaced. This is why the check works from any thread or process: math-verify's
   own timeout uses `signal.alarm`, which only works in the main thread, so we call it with its
   timeouts disabled and enforce ours from outside. The worker also has an address-space limit,
   so an answer like `9^{9^{9}}` cannot take the trainer's memory with it.

Protects against: slow or pathological expressions (deadline + restart), memory blow-ups (rlimit),
crashes of the parser (the worker is restarted, the check is a "worker_error"), responses that
hedge with several different boxed answers (wrong), and absolute float tolerances. Does not
protect against: a correct answer the parser cannot read (scored wrong), unit conversions
(`180 min` vs `3 hours` is scored wrong), answers whose correctness depends on the question
("round to two decimals").

Deviations from plain math-verify (each one has a labelled case in tests/unit/math_pairs.py):
- Numeric comparison (replaces `math_verify.grader.sympy_numeric_eq` inside the worker only):
  exact for exact numbers (math-verify's `evalf(chop=True)` says `2^{-99}` equals `2^{-98}`), a
  float against an exact value must agree to 6 significant digits (math-verify rounds to 6
  *decimal places*, so `1e-7` equals `2e-7`), two floats must agree to 1e-9 relative.
- Percent: `50\\%`, `0.5` and `50` are all accepted for a `50\\%` reference (and `50\\%` for a
  `0.5` or `50` reference); `0.5` for a `50` reference is not.
- Units are stripped by us, not by math-verify (its list strips single letters such as the `c`
  of `+ c`); two different known units (`5 m` vs `5 cm`) are not equal.
- The symbol `i` is the imaginary unit on both sides (math-verify keeps it a real symbol, so
  `i^2` is not `-1`); sets may be compared with inequalities (`x \\le 3` vs `(-\\infty, 3]`).
- Plain numbers (`0.75`, `3/4`, `\\frac{1}{2}`, `1.5 \\times 10^{-8}`) are compared in the caller,
  exactly, by the same rule (a decimal point makes a float): no parsing for most answers.
- An explicit set `\\{1,2\\}` is not the pair or interval `(1,2)` (math-verify says it is).
- Degrees: `30^\\circ` is 30, but inside a trig function degrees become radians.
- Several boxed answers: correct only if every one is equivalent to the reference. Among
  "Answer:" lines and "the answer is" phrases only the last counts: long chains of thought state
  and retract intermediate answers, a box is the explicit final commitment.
- Speed (no verdict changes, see math_worker.py): two-stage SLL-then-LL parsing, no `simplify`
  for two constants already found different numerically, a parser warmed up at start-up.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from fractions import Fraction
from typing import Literal

if importlib.util.find_spec("math_verify") is None:  # the registry skips us on ImportError
    raise ModuleNotFoundError("the math reward needs math-verify: pip install 'longrl[math]'", name="math_verify")

from longrl.rewards.math_worker import (
    FLOAT_DIGITS,
    FLOAT_REL_TOL,
    Verdict,
    VerifierPool,
    check_pairs,
)
from longrl.rewards.registry import Reward
from longrl.types import Prompt, RewardResult

__all__ = ["Extraction", "MathRewardConfig", "NormalizedAnswer", "Verdict", "VerifierPool",
           "check_equivalence", "extract_answer", "extract_answers", "is_equivalent",
           "math_reward", "normalize_answer", "score_response"]  # fmt: skip

Fallback = Literal["none", "last_number", "last_math"]

# ----------------------------------------------------------------------------------------------
# 1. Extraction
# ----------------------------------------------------------------------------------------------

_BOX_START = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_LINE = re.compile(
    r"^[ \t>#*_]*(?:final\s+)?answer\s*[*_]*\s*[:：]\s*[*_]*[ \t]*(?P<ans>[^\n]+?)[ \t*_]*$",
    re.IGNORECASE | re.MULTILINE,
)
_ANSWER_PHRASE = re.compile(
    r"\bthe\s+(?:final\s+)?answer\s+(?:is|=)\s*:?\s*(?P<ans>[^\n]+?)\s*(?=\.\s|\.?$|\n)",
    re.IGNORECASE,
)
_LAST_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+(?:\.\d+)?)?%?")
_MATH_SPANS = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)


@dataclass(frozen=True)
class Extraction:
    answers: tuple[str, ...]  # distinct after normalisation, by last appearance: final one last
    source: str  # "boxed" | "answer_phrase" | "fallback" | "none"


def _braced(text: str, open_index: int) -> tuple[str, int] | None:
    """Content of the group whose `{` is at `open_index`, and the index after its `}`.

    Escaped braces (`\\{`, `\\}`) are content, not grouping, as in LaTeX. None if unclosed (a
    response cut off by the length limit).
    """
    depth, i = 0, open_index
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2  # skip the escaped character, including `\\{` and `\\\\`
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[open_index + 1 : i], i + 1
        i += 1
    return None


def _unbox(content: str) -> str:
    """`\\boxed{\\boxed{3}}` -> `3`; `x = \\boxed{3}` -> `x = 3` (inner box: same answer)."""
    match = _BOX_START.search(content)
    while match:
        inner = _braced(content, match.end() - 1)
        if inner is None:
            break
        content = content[: match.start()] + inner[0] + content[inner[1] :]
        match = _BOX_START.search(content)
    return content


def _boxed_answers(text: str) -> list[str]:
    answers, start = [], 0
    while match := _BOX_START.search(text, start):
        group = _braced(text, match.end() - 1)
        if group is None:
            break
        answers.append(_unbox(group[0]).strip())
        start = group[1]  # boxes nested in this one are part of it
    return answers


def _phrase_answer(text: str) -> str | None:
    """The last "Answer: ..." line or "the answer is ..." phrase, by position."""
    matches = [*_ANSWER_LINE.finditer(text), *_ANSWER_PHRASE.finditer(text)]
    if not matches:
        return None
    return max(matches, key=lambda m: m.start("ans")).group("ans").strip()


def _fallback_answer(text: str, fallback: Fallback) -> str | None:
    if fallback == "last_number":
        numbers = _LAST_NUMBER.findall(text)
        return numbers[-1].rstrip(",") if numbers else None
    if fallback == "last_math":
        spans = _MATH_SPANS.findall(text)
        return next((s for s in spans[-1] if s), None) if spans else None
    return None


def extract_answers(text: str, fallback: Fallback = "last_number") -> Extraction:
    """All final answers a response commits to (see the module docstring for the priority)."""
    if fallback not in ("none", "last_number", "last_math"):
        raise ValueError(f"fallback={fallback!r}: use 'none', 'last_number' or 'last_math'")
    boxed = [a for a in _boxed_answers(text) if a]
    if boxed:
        distinct = {normalize_answer(a).key: a for a in reversed(boxed)}  # keeps the first raw
        return Extraction(tuple(reversed(distinct.values())), "boxed")
    for source, answer in (("answer_phrase", _phrase_answer(text)),
                           ("fallback", _fallback_answer(text, fallback))):
        if answer and (answer := _strip_wrappers(answer)):
            return Extraction((answer,), source)
    return Extraction((), "none")


def _strip_wrappers(answer: str) -> str:
    """`**$\\frac{1}{2}$**.` -> `\\frac{1}{2}`: markdown bold, math delimiters, full stop."""
    answer = answer.strip().strip("*_").strip().rstrip(".").strip()
    answer = re.sub(r"^(?:\$+|\\\(|\\\[)\s*|\s*(?:\$+|\\\)|\\\])$", "", answer)
    return answer.strip()


def extract_answer(text: str, fallback: Fallback = "last_number") -> str | None:
    """The last final answer of a response, or None. Use `extract_answers` to see all of them."""
    answers = extract_answers(text, fallback).answers
    return answers[-1] if answers else None


# ----------------------------------------------------------------------------------------------
# 2. Normalisation (strings only: cheap, runs in the caller)
# ----------------------------------------------------------------------------------------------

# Known units, alias -> canonical. Two *different* canonical units make answers unequal; other
# trailing words (`5 apples`) are stripped but never conflict.
_UNIT_ALIASES = {
    "mm": "mm", "millimeter": "mm", "millimetre": "mm", "cm": "cm", "centimeter": "cm",
    "centimetre": "cm", "m": "m", "meter": "m", "metre": "m", "km": "km", "kilometer": "km",
    "kilometre": "km", "in": "in", "inch": "in", "inche": "in", "ft": "ft", "foot": "ft",
    "feet": "ft", "yd": "yd", "yard": "yd", "mi": "mi", "mile": "mi", "mg": "mg", "g": "g",
    "gram": "g", "kg": "kg", "kilogram": "kg", "lb": "lb", "pound": "lb", "oz": "oz",
    "ounce": "oz", "ml": "ml", "milliliter": "ml", "l": "l", "liter": "l", "litre": "l",
    "s": "s", "sec": "s", "second": "s", "min": "min", "minute": "min", "h": "h", "hr": "h",
    "hour": "h", "day": "day", "week": "week", "month": "month", "yr": "year", "year": "year",
    "degree": "deg", "deg": "deg", "radian": "rad", "rad": "rad", "dollar": "dollar",
    "cent": "cent", "mph": "mph", "kph": "kph", "euro": "euro",
}  # fmt: skip
_AREA_PREFIX = re.compile(r"^(?:square|sq\.?|cubic|cu\.?)\s+")
_GENERIC_UNITS = {"unit", "units", "square units", "sq units", "cubic units"}
# Words that are mathematics, never units (`2 pi`, `3 and 4`).
_MATH_WORDS = {"pi", "ln", "log", "sin", "cos", "tan", "exp", "inf", "infinity", "and", "or",
               "i", "e", "x", "y", "z", "n", "k"}  # fmt: skip

_TEXT_SUFFIX = re.compile(
    r"^(?P<body>.*?)\s*\\(?:text|textrm|textnormal|textit|mathrm|mbox|rm)\s*\{\s*"
    r"(?P<word>[A-Za-z][A-Za-z ./]*?)\s*\}\s*(?:\^\s*\{?\s*(?P<pow>[23])\s*\}?)?$"
)
_PLAIN_SUFFIX = re.compile(
    r"^(?P<body>.*?[\d}])\s+(?P<word>[A-Za-z][A-Za-z. ]*?)\s*(?:\^\s*\{?\s*(?P<pow>[23])\s*\}?)?$"
)
_PLAIN_NUMBER = re.compile(r"^[-+]?(?:\d[\d,]*(?:\.\d+)?|\.\d+)(?:/\d+)?$")
_DEGREE_MARK = r"(?:\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|°|\\degree\b)"  # not a bare `\circ`: f∘g
_DEGREES = re.compile(rf"\s*{_DEGREE_MARK}")
_DEGREES_INSIDE = re.compile(rf"(\d+(?:\.\d+)?)\s*{_DEGREE_MARK}")
_TRIG = re.compile(r"\\(?:sin|cos|tan|cot|sec|csc)(?![A-Za-z])")
_REPEATING = re.compile(r"^(-?)(\d*)\.(\d*)\\overline\s*\{(\d+)\}$")
_PERCENT = re.compile(r"\s*(?:\\?%|\\text\{\s*percent\s*\}|percent)\s*$")
_SPACING = re.compile(r"(?<!\\)\\[,;:!> ]|\\q?quad\b|~")  # not the `\\` of a matrix row
_SCIENTIFIC = re.compile(r"(?<![\w.\\])(\d+(?:\.\d+)?)[eE]([-+]?\d+)(?![\w.])")
_FUNCTION_WORDS = re.compile(
    r"(?<![\\A-Za-z])(arcsin|arccos|arctan|sin|cos|tan|cot|sec|csc|ln|log|exp|pi|sqrt)(?![A-Za-z])"
)
_MIXED_LATEX = re.compile(r"^(-?)(\d+)\s*\\frac\{(\d+)\}\{(\d+)\}$")
_MIXED_PLAIN = re.compile(r"^(-?)(\d+)\s+(\d+)/(\d+)$")
_CHOICE = re.compile(r"^(?:\\text\{\s*)?\(?\s*([A-E])\s*\)?(?:\s*\})?$")
_UNICODE = {"−": "-", "–": "-", "×": r"\times ", "·": r"\cdot ", "÷": "/", "π": r"\pi ",
            "√": r"\sqrt", "∞": r"\infty ", "≤": r"\le ", "≥": r"\ge ", "≠": r"\ne ",
            "±": r"\pm ", "∅": r"\emptyset ", "∪": r"\cup ", "∩": r"\cap ",
            "\u2009": " "}  # fmt: skip


@dataclass(frozen=True)
class NormalizedAnswer:
    text: str  # LaTeX for math-verify, without units or percent sign
    unit: str | None = None  # canonical unit if known (`cm`), else the stripped word, else None
    percent: bool = False  # the answer ended in a percent sign

    @property
    def key(self) -> str:
        return f"{self.text}%" if self.percent else self.text


def _clean(text: str) -> str:
    for char, latex in _UNICODE.items():
        text = text.replace(char, latex)
    text = re.sub(r"\\[dtc]frac", r"\\frac", text)
    text = re.sub(r"\\(?:displaystyle|left\.|right\.)", "", text)
    text = re.sub(r"\\varnothing|\\\{\s*\\\}", r"\\emptyset", text)
    text = re.sub(r"\\(?:textbf|mathbf|textrm|mathrm|textnormal|textit|mbox|rm)\b", r"\\text", text)
    text = re.sub(r"(?<=\d)(?:\{,\}|\\,)(?=\d{3})", "", text)  # 1{,}000 and 1\,000
    text = _SPACING.sub(" ", text)
    text = re.sub(r"^\s*(?:\\\(|\\\[|\$+)|(?:\\\)|\\\]|\$+)\s*$", "", text.strip()).strip()
    text = text.strip(" \t\n.;,:")  # `5.` is a sentence's full stop, not a decimal point
    return re.sub(r"\s+", " ", text)


def _canonical_unit(word: str, power: str | None) -> str | None:
    word = word.lower().strip(" .")
    if word in _GENERIC_UNITS:
        return "unit"
    area = _AREA_PREFIX.match(word)
    base = word[area.end() :] if area else word
    base = base[:-1] if base.endswith("s") and base[:-1] in _UNIT_ALIASES else base
    canonical = _UNIT_ALIASES.get(base, base)
    if area or power:
        canonical += "^3" if (power == "3" or (area and word.startswith("cu"))) else "^2"
    return canonical


def _split_unit(text: str) -> tuple[str, str | None]:
    """Strip one trailing unit: `\\text{ cm}^2`, `cm`, `dollars`, a leading `\\$`, degrees."""
    if re.match(r"^\\?\$\s*\S", text):  # `$` itself was removed by _clean; `\$` stays
        return _split_unit(text.lstrip("\\$ "))[0], "dollar"
    if _DEGREES.search(text) and not _TRIG.search(text):  # `30^\circ`, but not `\cos 60^\circ`
        return _DEGREES.sub("", text).strip(), "deg"
    match = _TEXT_SUFFIX.match(text)
    if match and match["body"].strip() and match["word"].lower() not in _MATH_WORDS:  # `4\text{i}`
        return match["body"].strip(), _canonical_unit(match["word"], match["pow"])
    if match := _PLAIN_SUFFIX.match(text):
        word = match["word"].lower().strip(" .")
        number = _PLAIN_NUMBER.match(match["body"])
        known = _canonical_unit(word, None) in _UNIT_ALIASES.values() and (len(word) > 1 or number)
        nouns = (number  # `5 apples`, not `2 x`
                 and re.fullmatch(r"[a-z]{2,}( [a-z]{2,})*", word)
                 and not set(word.split()) & _MATH_WORDS)  # fmt: skip
        if known or nouns:
            return match["body"].strip(), _canonical_unit(word, match["pow"])
    return text, None


def _rewrap_call(text: str, name: str, left: str, right: str) -> str:
    """`name(...)` -> `left...right` with nested parentheses kept: `\\sqrt(x+1)` -> `\\sqrt{x+1}`,
    `floor(n/2)` -> `{\\lfloor n/2 \\rfloor}`. A call left open stays as it is."""
    pattern = re.compile(rf"(?<![\\A-Za-z]){re.escape(name)}\s*\(")
    at = 0
    while match := pattern.search(text, at):
        depth = 0
        for i in range(match.end() - 1, len(text)):
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            if depth == 0:
                inner = text[match.end():i]
                text = f"{text[:match.start()]}{left}{inner}{right}{text[i + 1:]}"
                break
        else:
            return text
        at = match.start() + len(left)
    return text


def _plain_to_latex(text: str) -> str:
    """Plain-text math as models write it (`sqrt(2)/2`, `2*pi`, `1e-7`, `floor(n/2)`) into LaTeX."""
    text = text.replace("**", "^")
    text = _SCIENTIFIC.sub(r"\1\\times 10^{\2}", text)
    text = _FUNCTION_WORDS.sub(r"\\\1 ", text)
    text = re.sub(r"\\(\w+) (?=[({])", r"\\\1", text)  # `\sqrt (` -> `\sqrt(`
    text = _rewrap_call(text, r"\sqrt", r"\sqrt{", "}")
    # braced, so that `2^floor(n/2)` keeps the whole call as its exponent; unrewritten, `floor`
    # reads as the product f*l*o*o*r
    text = _rewrap_call(text, "floor", r"{\lfloor ", r" \rfloor}")
    text = _rewrap_call(text, "ceil", r"{\lceil ", r" \rceil}")
    return re.sub(r"(?<!\*)\*(?!\*)", r" \\cdot ", text)


def _repeating_decimal(match: re.Match) -> str:
    """`0.1\\overline{6}` -> `\\frac{1}{6}`: the fraction the notation stands for."""
    sign, whole, fixed, period = match.groups()
    value = Fraction(int(whole or 0)) + Fraction(int(fixed or 0), 10 ** len(fixed))
    value += Fraction(int(period), (10 ** len(period) - 1) * 10 ** len(fixed))
    return rf"{sign}\frac{{{value.numerator}}}{{{value.denominator}}}"


def _numeric_forms(text: str) -> str:
    text = _REPEATING.sub(_repeating_decimal, text)
    text = _DEGREES_INSIDE.sub(r"(\\frac{\1\\pi}{180})", text)  # left only inside trig: radians
    if re.match(r"^[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$", text):  # 1,000,000
        return text.replace(",", "")
    if mixed := (_MIXED_LATEX.match(text) or _MIXED_PLAIN.match(text)):
        sign, whole, num, den = mixed.groups()
        if 0 < int(num) < int(den):  # a proper fraction after a whole number is a mixed number
            return rf"{sign}\frac{{{int(whole) * int(den) + int(num)}}}{{{den}}}"
    if choice := _CHOICE.match(text):
        return choice.group(1)
    return text


def normalize_answer(answer: str) -> NormalizedAnswer:
    """Text-level normalisation applied to both sides before parsing (module docstring, 2.)."""
    text = _clean(answer)
    percent = bool(_PERCENT.search(text))  # before units: `25 percent` is not 25 of a unit
    text = _PERCENT.sub("", text).strip() if percent else text
    text, unit = _split_unit(text)
    text = _numeric_forms(_plain_to_latex(text).strip())
    return NormalizedAnswer(re.sub(r"\s+", " ", text).strip(), unit, percent)


def _units_conflict(a: NormalizedAnswer, b: NormalizedAnswer) -> bool:
    known = set(_UNIT_ALIASES.values())
    base = lambda u: u.split("^")[0] if u else None
    return bool(a.unit and b.unit and base(a.unit) in known and base(b.unit) in known
                and a.unit != b.unit)  # fmt: skip


def _set_vs_sequence(a: NormalizedAnswer, b: NormalizedAnswer) -> bool:
    """`\\{1,2\\}` against `(1,2)` / `[1,2]`: an explicit set is never a point or an interval.

    math-verify accepts a bare list `1, 2` for a `(1,2)` reference (a point written without its
    parentheses) and parses `\\{1,2\\}` to the same set, so the braces are checked here.
    """
    is_set = lambda t: t.startswith(r"\{") and t.endswith(r"\}")
    is_sequence = lambda t: t[:1] in "([" and t[-1:] in ")]" and "," in t
    return (is_set(a.text) and is_sequence(b.text)) or (is_sequence(a.text) and is_set(b.text))


# Plain numbers are compared here, exactly, without parsing. A decimal point makes a float.
_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
_LITERALS = (  # (pattern, how to get (numerator, denominator, exponent of 10) from its groups)
    (re.compile(rf"^({_NUM})$"), lambda m: (m[1], "1", "0")),
    (re.compile(rf"^({_NUM})\s*/\s*({_NUM})$"), lambda m: (m[1], m[2], "0")),
    (re.compile(rf"^([-+]?)\\frac\{{({_NUM})\}}\{{({_NUM})\}}$"),
     lambda m: (m[1] + m[2], m[3], "0")),
    (re.compile(rf"^({_NUM})\s*\\(?:times|cdot)\s*10\s*\^\s*\{{?([-+]?\d+)\}}?$"),
     lambda m: (m[1], "1", m[2])),
    (re.compile(r"^10\s*\^\s*\{?([-+]?\d+)\}?$"), lambda m: ("1", "1", m[1])),
)  # fmt: skip


def _literal(text: str) -> tuple[Fraction, bool] | None:
    """(value, written with a decimal point) of a plain number, else None."""
    for pattern, parts in _LITERALS:
        if match := pattern.match(text):
            numerator, denominator, exponent = parts(match)
            if "-" in numerator[1:] or abs(int(exponent)) > 400 or float(denominator) == 0:
                return None  # `--1`; absurd exponents go to the worker and its deadline
            try:
                value = Fraction(numerator.replace("+", "")) / Fraction(denominator)
            except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
                return None
            return value * Fraction(10) ** int(exponent), "." in numerator + denominator
    return None


def _floor_log10(value: Fraction) -> int:
    exponent = int((value.numerator.bit_length() - value.denominator.bit_length()) * 0.30103)
    while Fraction(10) ** exponent > value:
        exponent -= 1
    while Fraction(10) ** (exponent + 1) <= value:
        exponent += 1
    return exponent


def _literals_equal(x: tuple[Fraction, bool], y: tuple[Fraction, bool]) -> bool:
    """The tolerance rule of the module docstring; `math_worker._numeric_verdict` applies it to
    expressions."""
    (a, a_float), (b, b_float) = x, y
    if a_float and b_float:
        return abs(a - b) <= FLOAT_REL_TOL * max(abs(a), abs(b))
    if a_float or b_float:
        exact = abs(b if a_float else a)
        if exact == 0:
            return a == b
        return abs(a - b) <= 5 * Fraction(10) ** (_floor_log10(exact) - FLOAT_DIGITS)
    return a == b


def _unbalanced(text: str) -> bool:
    """An answer cut off mid-expression (`(x^2 + 2)/(x^2 + `) whose prefix the parser would
    still read as a value. Round and square brackets are counted together, so half-open
    intervals such as `[0, 1)` are balanced; braces must balance on their own."""
    opened = text.count("(") + text.count("[") - text.count(")") - text.count("]")
    return opened != 0 or text.count("{") != text.count("}")


def _literal_verdict(pairs: list[tuple[str, str]]) -> bool | None:
    literals = [(_literal(a), _literal(b)) for a, b in pairs]
    if any(x is None or y is None for x, y in literals):
        return None
    return any(_literals_equal(x, y) for x, y in literals)


def _comparison_pairs(pred: NormalizedAnswer, gold: NormalizedAnswer) -> list[tuple[str, str]]:
    """(pred, gold) LaTeX pairs to try; equal if any is. Only percent gives more than one."""
    pct = lambda s: rf"\frac{{{s}}}{{100}}"
    if pred.percent == gold.percent:
        return [(pred.text, gold.text)]
    if gold.percent:  # 0.5 or 50 for 50%
        return [(pred.text, pct(gold.text)), (pred.text, gold.text)]
    return [(pct(pred.text), gold.text), (pred.text, gold.text)]  # 50% for 0.5 or 50


# ----------------------------------------------------------------------------------------------
# 3. Equivalence: plain numbers here, everything else in a worker subprocess (math_worker.py)
# ----------------------------------------------------------------------------------------------

def check_equivalence(
    pred: str, gold: str, timeout_s: float = 5.0, num_workers: int = 1
) -> Verdict:
    """Is the answer `pred` equivalent to the reference `gold`? Never raises on bad input.

    Safe from any thread or process; a check that exceeds `timeout_s` is "timeout" (not equal).
    """
    p, g = normalize_answer(str(pred)), normalize_answer(str(gold))
    if not p.text or not g.text:
        return Verdict(False, "empty")
    if _unbalanced(p.text):
        return Verdict(False, "malformed")
    if _units_conflict(p, g):
        return Verdict(False, "unit_mismatch")
    if _set_vs_sequence(p, g):
        return Verdict(False, "not_equal")
    pairs = _comparison_pairs(p, g)
    if (equal := _literal_verdict(pairs)) is None and any(a == b for a, b in pairs):
        equal = True  # identical after normalisation
    if equal is not None:  # decided without parsing: most answers are plain numbers
        return Verdict(equal, "equal" if equal else "not_equal")
    return check_pairs(pairs, timeout_s, num_workers)


def is_equivalent(pred: str, gold: str, timeout_s: float = 5.0) -> bool:
    """Boolean form of `check_equivalence` (a timeout is False)."""
    return check_equivalence(pred, gold, timeout_s).equal



# ----------------------------------------------------------------------------------------------
# 4. The reward
# ----------------------------------------------------------------------------------------------

_MAX_CANDIDATES = 4  # more distinct boxed answers than this is hedging; don't spend time on it


@dataclass
class MathRewardConfig:
    fallback: Fallback = field(default="last_number", metadata={
        "help": "Answer when there is no box and no 'Answer:'/'the answer is': 'last_number', "
                "'last_math' (last $...$) or 'none' (strict format)."})  # fmt: skip
    timeout_s: float = field(default=5.0, metadata={
        "help": "Deadline of one equivalence check, seconds; an overrun scores 0 ('timeout')."})
    num_workers: int = field(default=1, metadata={
        "help": "Verifier subprocesses per process (each ~150 MB); 1-2 on a shared machine."})
    max_answer_chars: int = field(default=500, metadata={
        "help": "Longer extracted answers score 0 ('answer_too_long') without parsing."})

    def __post_init__(self):
        if self.fallback not in ("none", "last_number", "last_math"):
            raise ValueError(f"math reward: fallback={self.fallback!r}; use 'none', "
                             "'last_number' or 'last_math'")  # fmt: skip
        if self.timeout_s <= 0 or self.num_workers < 1 or self.max_answer_chars < 1:
            raise ValueError("math reward: timeout_s, num_workers and max_answer_chars must be "
                             f"positive (got {self.timeout_s}, {self.num_workers}, "
                             f"{self.max_answer_chars})")  # fmt: skip


def _reference_answer(reference: str) -> str:
    """A reference written as a worked solution (MATH style) is reduced to its last box."""
    boxed = _boxed_answers(reference)
    return boxed[-1] if boxed else reference


def _judge(extraction: Extraction, gold: str, config: MathRewardConfig) -> str:
    """The reason for the score: "correct" or why not."""
    answers = extraction.answers
    if not answers:
        return "no_answer"
    if len(answers) > _MAX_CANDIDATES:
        return "multiple_answers"
    if any(len(a) > config.max_answer_chars for a in answers):
        return "answer_too_long"
    for answer in answers:  # every committed answer must be right (module docstring)
        verdict = check_equivalence(answer, gold, config.timeout_s, config.num_workers)
        if not verdict.equal:
            if verdict.reason in ("timeout", "worker_error"):
                return verdict.reason
            return "multiple_answers" if len(answers) > 1 else "wrong"
    return "correct"


def score_response(response: str, reference: str | None, config: MathRewardConfig) -> RewardResult:
    """1.0 if the response's final answer(s) equal the reference, else 0.0; never raises."""
    info: dict = {"reason": "no_reference", "extracted": None, "source": "none", "num_answers": 0}
    try:
        if reference is None or not str(reference).strip():
            return RewardResult(0.0, info)
        extraction = extract_answers(response or "", config.fallback)
        info.update(extracted=extraction.answers[-1] if extraction.answers else None,
                    source=extraction.source, num_answers=len(extraction.answers))  # fmt: skip
        info["reason"] = _judge(extraction, _reference_answer(str(reference)), config)
    except Exception as exc:  # noqa: BLE001 - a reward must never stop the loop
        info.update(reason="error", error=f"{type(exc).__name__}: {exc}")
    return RewardResult(1.0 if info["reason"] == "correct" else 0.0, info)


def math_reward(**options) -> Reward:
    """The `math` reward's factory: options are `MathRewardConfig` fields."""
    valid = {f.name for f in fields(MathRewardConfig)}
    if unknown := set(options) - valid:
        raise TypeError(f"math reward: unknown option(s) {sorted(unknown)}; valid: {sorted(valid)}")
    config = MathRewardConfig(**options)

    def reward(prompts: Sequence[Prompt], responses: Sequence[str]) -> list[RewardResult]:
        items = [(r, getattr(p, "answer", None)) for p, r in zip(prompts, responses)]
        if config.num_workers == 1:
            results = [score_response(r, a, config) for r, a in items]
        else:
            with ThreadPoolExecutor(config.num_workers) as pool:
                results = list(pool.map(lambda item: score_response(*item, config), items))
        missing = len(prompts) - len(results)  # a caller bug, scored 0 rather than raised
        return results + [RewardResult(0.0, {"reason": "error", "error": "no response"})
                          for _ in range(missing)]  # fmt: skip

    return reward

