"""The math reward (SPEC §6): extraction, equivalence on the labelled suite, timeouts, the reward.

Labels are hand-written (tests/unit/math_pairs.py); every assertion is an exact outcome.
"""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("math_verify")

from longrl.rewards import math as math_reward_module
from longrl.rewards import math_worker
from longrl.rewards.math import (
    MathRewardConfig,
    check_equivalence,
    extract_answer,
    extract_answers,
    is_equivalent,
    math_reward,
    normalize_answer,
    score_response,
)
from longrl.types import Prompt

sys.path.insert(0, str(Path(__file__).parent))
from math_pairs import PAIRS

PATHOLOGICAL = "9^{9^{9}}"  # 370 million digits: sympy computes it for minutes


# ---- the labelled suite ------------------------------------------------------------------------


def test_suite_is_large_and_covers_the_hard_classes():
    classes = {cls for *_, cls in PAIRS}
    assert len(PAIRS) >= 150
    assert {"tiny", "complex", "interval", "pm", "percent", "set", "tuple", "matrix", "equation",
            "units", "latex_plain"} <= classes  # fmt: skip
    assert len({(p, g) for p, g, *_ in PAIRS}) == len(PAIRS)  # no duplicates


@pytest.mark.parametrize(("pred", "gold", "expected", "cls"), PAIRS,
                         ids=[f"{c}:{p}|{g}" for p, g, _, c in PAIRS])  # fmt: skip
def test_labelled_pair(pred, gold, expected, cls):
    assert check_equivalence(pred, gold).equal is expected


def test_float_against_exact_needs_six_significant_digits():
    # 1/3 - 0.333333 = 1/3,000,000 = 3.3e-7 <= 5e-7 (half a unit in the 6th digit of 0.333...)
    # 1/3 - 0.33333  = 1/300,000   = 3.3e-6 >  5e-7
    assert is_equivalent("0.333333", r"\frac{1}{3}")  # decided without parsing (plain numbers)
    assert not is_equivalent("0.33333", r"\frac{1}{3}")
    assert is_equivalent("0.333333", r"\frac{\sqrt{4}}{6}")  # same rule inside the worker
    assert not is_equivalent("0.33333", r"\frac{\sqrt{4}}{6}")
    # the rule is relative: 1e-30 * (1/3) is compared at its own scale
    assert is_equivalent(r"3.33333 \times 10^{-31}", r"\frac{1}{3} \cdot 10^{-30}")
    assert not is_equivalent(r"3.3333 \times 10^{-31}", r"\frac{1}{3 \cdot 10^{30}}")


def test_verdict_reasons():
    assert check_equivalence("5 m", "5 cm").reason == "unit_mismatch"
    assert check_equivalence("5 m", "5").reason == "equal"  # a lone letter after a number: unit
    assert check_equivalence("5m", "5").reason == "not_equal"  # but `5m` may be 5 times m
    assert check_equivalence("", "5").reason == "empty"
    assert check_equivalence("(x^2 + 2)/(x^2 + ", "2").reason == "malformed"
    assert check_equivalence("[0, 1)", "[0,1)").reason == "equal"  # mixed brackets balance
    assert check_equivalence("2", "2").reason == "equal"
    assert check_equivalence("x+1", "x+2").reason == "not_equal"
    assert check_equivalence("9" * 5000, "1").equal is False  # beyond Python's int-str limit
    assert check_equivalence(2, 2.0).equal is True  # non-strings are read as their str()


@pytest.mark.parametrize(("answer", "text", "unit", "percent"), [
    (r"5\text{ cm}^2", "5", "cm^2", False),
    ("12 inches", "12", "in", False),
    (r"\$1,000.", "1000", "dollar", False),
    (r"30^{\circ}", "30", "deg", False),
    (r"50\%", "50", None, True),
    ("25 percent", "25", None, True),
    (r"\dfrac{\pi}{2}", r"\frac{\pi}{2}", None, False),
    (r"2\frac{1}{4}", r"\frac{9}{4}", None, False),
    ("sqrt(2)/2", r"\sqrt{2}/2", None, False),
    ("1.5e-7", r"1.5\times 10^{-7}", None, False),
    (r"\textbf{(C)}", "C", None, False),
    (r"0.1\overline{6}", r"\frac{1}{6}", None, False),
    ("x + c", "x + c", None, False),  # `c` is an integration constant here, not centi-anything
])  # fmt: skip
def test_normalize_answer(answer, text, unit, percent):
    normalized = normalize_answer(answer)
    assert (normalized.text, normalized.unit, normalized.percent) == (text, unit, percent)


# ---- extraction ------------------------------------------------------------------------------


@pytest.mark.parametrize(("response", "answers", "source"), [
    (r"so \boxed{\frac{1}{\sqrt{2}}}.", (r"\frac{1}{\sqrt{2}}",), "boxed"),
    (r"\boxed{\boxed{3}}", ("3",), "boxed"),
    (r"\fbox{7}", ("7",), "boxed"),
    (r"\boxed{\{1, 2\}}", (r"\{1, 2\}",), "boxed"),
    (r"\boxed{x = \boxed{4}}", ("x = 4",), "boxed"),
    (r"\boxed{5} and again \boxed{5}", ("5",), "boxed"),
    (r"\boxed{5} or maybe \boxed{6}", ("5", "6"), "boxed"),
    (r"\boxed{\frac{1}{2}} \boxed{\dfrac{1}{2}}", (r"\frac{1}{2}",), "boxed"),  # same normalised
    ("Answer: 3\n\\boxed{4}", ("4",), "boxed"),  # a box beats an answer line
    ("Thinking...\nAnswer: 42", ("42",), "answer_phrase"),
    ("**Final Answer:** $x=3$", ("x=3",), "answer_phrase"),
    (r"The answer is $\frac{1}{2}$.", (r"\frac{1}{2}",), "answer_phrase"),
    ("the answer is 3. Wait, no. So the answer is 4.", ("4",), "answer_phrase"),
    ("The answer is 3.5.", ("3.5",), "answer_phrase"),
    ("Final Answer: The final answer is $5$. I hope it is correct.", ("5",), "answer_phrase"),
    ("3 cats and 5 dogs", ("5",), "fallback"),
    ("it costs 1,000 dollars", ("1,000",), "fallback"),
    (r"cut off: \boxed{\frac{1}{2", ("2",), "fallback"),  # an unclosed box is not an answer
    ("I do not know.", (), "none"),
    ("", (), "none"),
])  # fmt: skip
def test_extract_answers(response, answers, source):
    assert extract_answers(response) == math_reward_module.Extraction(answers, source)


def test_extraction_fallbacks():
    text = "so $x = 2$ and then $y = 3$, 7 ways"
    assert extract_answer(text) == "7"
    assert extract_answer(text, fallback="last_math") == "y = 3"
    assert extract_answer(text, fallback="none") is None
    assert extract_answer(r"\boxed{1} \boxed{2}") == "2"  # the last; extract_answers has both
    with pytest.raises(ValueError, match="fallback"):
        extract_answers("1", fallback="first_number")


# ---- the reward --------------------------------------------------------------------------------


def _prompts(*answers):
    return [Prompt(id=str(i), text="q", answer=a) for i, a in enumerate(answers)]


def test_reward_scores_a_batch():
    reward = math_reward()
    solution = r"Since $2+2=4$, the result is $\boxed{4}$."  # a reference written as a solution
    cases = [  # (reference, response, score, reason, extracted)
        ("4", r"... so \boxed{4}", 1.0, "correct", "4"),
        ("4", r"... so \boxed{5}", 0.0, "wrong", "5"),
        ("4", "no idea", 0.0, "no_answer", None),
        ("4", r"\boxed{4} or \boxed{5}", 0.0, "multiple_answers", "5"),
        (r"\frac12", r"\boxed{0.5}, i.e. \boxed{\frac{1}{2}}", 1.0, "correct", r"\frac{1}{2}"),
        (None, r"\boxed{4}", 0.0, "no_reference", None),
        (solution, r"\boxed{4}", 1.0, "correct", "4"),
        ("4", r"\boxed{" + "1+" * 300 + "1}", 0.0, "answer_too_long", "1+" * 300 + "1"),
        ("4", r"\boxed{1}\boxed{2}\boxed{3}\boxed{4}\boxed{5}", 0.0, "multiple_answers", "5"),
    ]
    results = reward(_prompts(*[c[0] for c in cases]), [c[1] for c in cases])
    got = [(r.score, r.info["reason"], r.info["extracted"]) for r in results]
    assert got == [c[2:] for c in cases]


def test_reward_options_are_checked():
    with pytest.raises(TypeError, match="unknown option.*fallback"):
        math_reward(fallbak="none")
    with pytest.raises(ValueError, match="timeout_s"):
        math_reward(timeout_s=0)
    strict = math_reward(fallback="none")
    assert strict(_prompts("5"), ["the total is 5"])[0].info["reason"] == "no_answer"


@pytest.mark.parametrize("response", [
    None, "", "\\", "\\boxed{", "\\boxed{\\frac{", "$$$$", "}}}{{{", "\\boxed{\\}}", "\x00\xff",
    "\\boxed{" + "(" * 400 + "}", "\\boxed{\\begin{pmatrix}1&2\\end{bmatrix}}", "\\boxed{1/0}",
    "\\boxed{\\sqrt{-}}", "\\boxed{x==}", "\\boxed{\\infty - \\infty}", "a" * 100_000,
    "\\boxed{" + "9" * 5000 + "}", "9" * 5000,
])  # fmt: skip
def test_reward_never_raises(response):
    [result] = math_reward()(_prompts("1"), [response])
    assert result.score == 0.0
    assert result.info["reason"] in {"wrong", "no_answer", "worker_error", "answer_too_long"}


def test_reward_never_raises_when_the_checker_fails(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(math_reward_module, "check_equivalence", broken)
    result = score_response(r"\boxed{1}", "1", MathRewardConfig())
    assert (result.score, result.info["reason"], result.info["error"]) == (0.0, "error",
                                                                           "RuntimeError: boom")
    # fewer responses than prompts: the missing ones score 0 instead of raising
    results = math_reward()(_prompts("1", "2"), [r"\boxed{1}"])
    assert [r.info["reason"] for r in results] == ["error", "error"]


# ---- time limit and concurrency ----------------------------------------------------------------


def test_timeout_from_a_non_main_thread_then_the_worker_recovers():
    out = {}

    def run():
        started = time.monotonic()
        out["verdict"] = check_equivalence(PATHOLOGICAL + "+1", PATHOLOGICAL, timeout_s=0.5)
        out["elapsed"] = time.monotonic() - started

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    assert out["verdict"].reason == "timeout" and out["verdict"].equal is False
    assert out["elapsed"] < 0.5 + 2.0  # the deadline, plus scheduling on a loaded machine
    assert check_equivalence("(x+1)^2", "x^2+2x+1").equal  # a fresh worker took over


def test_reward_reports_timeout():
    [result] = math_reward(timeout_s=0.5)(_prompts(PATHOLOGICAL), [r"\boxed{9^{9^{9}}+1}"])
    assert (result.score, result.info["reason"]) == (0.0, "timeout")


def test_many_threads_share_two_workers():
    pairs = [p for p in PAIRS if p[3] in ("symbolic", "interval", "complex")]
    results = [None] * len(pairs)

    def run(i):
        results[i] = check_equivalence(pairs[i][0], pairs[i][1], num_workers=2).equal

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(pairs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == [p[2] for p in pairs]


def _check_in_child(queue):
    queue.put((is_equivalent(r"\frac{\pi}{2}", "pi/2"), is_equivalent("x", "y")))


def test_works_in_a_forked_child_process():
    is_equivalent("x", "2x")  # the parent has a worker before the fork
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_check_in_child, args=(queue,))
    child.start()
    assert queue.get(timeout=60) == (True, False)
    child.join(10)
    assert child.exitcode == 0
    assert is_equivalent("2x", "x+x")  # the parent's worker is untouched


def test_two_stage_parsing_gives_the_same_trees_as_ll():
    """SLL-then-LL parsing (the worker's speed-up) must not change any parse of the suite."""
    script = f"""
import importlib.util, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from math_pairs import PAIRS
from latex2sympy2_extended.latex2sympy2 import latex2sympy
texts = sorted({{t for p, g, *_ in PAIRS for t in (p, g)}})
def trees():
    out = []
    for t in texts:
        try:
            out.append(str(latex2sympy(t)))
        except Exception as exc:
            out.append(type(exc).__name__)
    return out
ll = trees()
path = {math_worker.__file__!r}
spec = importlib.util.spec_from_file_location("_longrl_math_worker", path)
module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
module._use_two_stage_parsing()
two_stage = trees()
print(sum(a != b for a, b in zip(ll, two_stage)), len(texts))
"""
    out = subprocess.run([sys.executable, "-P", "-c", script], capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()  # fmt: skip
    assert out[0] == "0" and int(out[1]) > 300


def test_worker_module_loads_without_the_longrl_package():
    """The worker loads math_worker.py by path: it must not pull in `longrl` (and torch)."""
    script = f"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location("_longrl_math_worker", {math_worker.__file__!r})
module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print(sorted(m for m in sys.modules if m.split(".")[0] in ("longrl", "torch", "sympy")))
"""
    out = subprocess.run([sys.executable, "-P", "-c", script], capture_output=True, text=True,
                         timeout=60, check=True).stdout.strip()  # fmt: skip
    assert out == "[]"
