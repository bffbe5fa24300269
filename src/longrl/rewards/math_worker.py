"""The math reward's equivalence check: math-verify in worker subprocesses with a deadline.

`check_equivalence` in `longrl.rewards.math` normalises both answers and decides plain numbers
itself; everything else comes here. A `VerifierPool` keeps a few persistent worker processes
per process (forked children start their own); a check takes an idle worker, sends it the
(pred, gold) LaTeX pairs as one JSON line and waits for the answer until its deadline:

* a worker that overruns is killed and replaced: the only way to stop a computation stuck in
  sympy, and why the check works from any thread (math-verify's own timeout is `signal.alarm`,
  main thread only, so it is called with its timeouts disabled);
* a worker has an address-space limit (`9^{9^{9}}` is a MemoryError there, not in the trainer)
  and exits when its parent dies;
* a worker that crashes is restarted and the check is a "worker_error".

The worker loads *this file* by path (`_BOOTSTRAP`), not `longrl.rewards.math_worker`: the
`longrl` package imports torch, which would add seconds and hundreds of MB per worker. So this
module imports nothing from `longrl`, and `longrl.rewards.math` imports its tolerances from here.

Inside the worker (bottom half of this file), math-verify is configured with our numeric rule
(`_numeric_equal`: the tolerance policy of `longrl.rewards.math`), `i` as the imaginary unit,
no unit stripping, and three speed-ups that do not change a verdict:
* LaTeX is parsed with ANTLR's SLL prediction first and full LL only where SLL fails (same trees,
  3-4x faster; tested on every string of the labelled suite);
* math-verify's last resort, `simplify(gold - pred)`, is skipped when both sides are constants
  that our numeric check has already evaluated and found different (it can only say "zero" for
  values that are equal, and 60-digit evaluation already said they are not);
* the parser is warmed up on common answer shapes at start-up (ANTLR caches its predictions per
  grammar decision), and the objects of start-up are frozen out of the garbage collector.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import re
import select
import string
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from fractions import Fraction

_WORKER_MODULE = "_longrl_math_worker"  # the worker's name for this file (loaded by path)
_IN_WORKER = __name__ == _WORKER_MODULE

# The tolerance policy (module docstring of longrl.rewards.math), shared by the caller's plain-
# number comparison and the worker's `_numeric_equal`.
FLOAT_DIGITS = 6  # a float against an exact value: agree to this many significant digits
FLOAT_REL_TOL = Fraction(1, 10**9)  # two floats: equal as written, up to representation noise

_STARTUP_TIMEOUT_S = 120.0  # importing sympy on a loaded machine; not part of a check's deadline
_WORKER_MEMORY_MB = 3072  # address-space limit of a worker; an overrun is a MemoryError there
# Load this file by path (see _WORKER_MODULE); -P keeps the working directory off sys.path.
_BOOTSTRAP = (
    "import importlib.util as u, sys; s = u.spec_from_file_location(%r, sys.argv[1]); "
    "m = u.module_from_spec(s); sys.modules[s.name] = m; s.loader.exec_module(m); "
    "m._worker_main(int(sys.argv[2]))" % _WORKER_MODULE
)


@dataclass(frozen=True)
class Verdict:
    equal: bool
    reason: str  # "equal" | "not_equal" | "unit_mismatch" | "empty" | "malformed" | "timeout" | "worker_error"


class _Worker:
    """One verifier subprocess speaking JSON lines. Used by one thread at a time (the pool)."""

    def __init__(self, memory_mb: int):
        self._memory_mb = memory_mb
        self._start()

    def _start(self) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self._proc = subprocess.Popen(
            [sys.executable, "-P", "-c", _BOOTSTRAP, __file__, str(self._memory_mb)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True,
        )  # fmt: skip
        self._buffer, self._ready = b"", False

    def _read_line(self, deadline: float) -> bytes | None:
        """The next line from the worker, None at the deadline; EOFError if the worker died."""
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise EOFError("verifier worker exited")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def _await_ready(self) -> None:
        if self._ready:
            return
        try:
            ready = self._read_line(time.monotonic() + _STARTUP_TIMEOUT_S) == b"ready"
        except EOFError:
            ready = False
        if not ready:
            self.restart()  # the next check tries a fresh process
            raise RuntimeError("math verifier worker did not start (its stderr says why); is "
                               "math-verify installed? pip install 'longrl[math]'")  # fmt: skip
        self._ready = True

    def check(self, pairs: list[tuple[str, str]], timeout_s: float) -> Verdict:
        self._await_ready()  # a restart's startup time is not charged to the check
        try:
            self._proc.stdin.write(json.dumps({"pairs": pairs}).encode() + b"\n")
            self._proc.stdin.flush()
            line = self._read_line(time.monotonic() + timeout_s)
            reply = None if line is None else json.loads(line)
        except (EOFError, OSError, ValueError):  # crashed (e.g. C stack overflow in sympy)
            self.restart()
            return Verdict(False, "worker_error")
        if reply is None:
            self.restart()  # the only way to stop a computation that is stuck in sympy
            return Verdict(False, "timeout")
        if "error" in reply:  # an exception inside math-verify; the worker is fine
            return Verdict(False, "worker_error")
        return Verdict(bool(reply["equal"]), "equal" if reply["equal"] else "not_equal")

    def restart(self) -> None:
        self.close()
        self._start()

    def close(self) -> None:
        self._proc.kill()
        self._proc.wait()
        self.forget()

    def forget(self) -> None:
        """Close our ends of the pipes without touching the process (a forked child's copy)."""
        for stream in (self._proc.stdin, self._proc.stdout):
            try:
                stream.close()
            except OSError:
                pass


class VerifierPool:
    """A few persistent workers shared by all threads of a process; a check takes an idle one."""

    def __init__(self, num_workers: int = 1, memory_mb: int = _WORKER_MEMORY_MB):
        # they import sympy concurrently while the caller goes on
        self._workers = [_Worker(memory_mb) for _ in range(num_workers)]
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        for worker in self._workers:
            self._idle.put(worker)

    def check(self, pairs: list[tuple[str, str]], timeout_s: float) -> Verdict:
        worker = self._idle.get()
        try:
            return worker.check(pairs, timeout_s)
        finally:
            self._idle.put(worker)

    def close(self) -> None:
        for worker in self._workers:  # also those busy in other threads: they see a dead worker
            worker.close()


_POOLS: dict[tuple[int, int], VerifierPool] = {}
_POOLS_LOCK = threading.Lock()


def get_pool(num_workers: int) -> VerifierPool:
    """This process's pool of `num_workers` workers, started on first use."""
    key = (os.getpid(), num_workers)  # a forked child starts its own workers
    with _POOLS_LOCK:
        if key not in _POOLS:
            _POOLS[key] = VerifierPool(num_workers)
        return _POOLS[key]


def check_pairs(pairs: list[tuple[str, str]], timeout_s: float, num_workers: int = 1) -> Verdict:
    """Equal if math-verify finds any (pred, gold) LaTeX pair equivalent within `timeout_s`."""
    return get_pool(num_workers).check(pairs, timeout_s)


def _close_pools() -> None:
    with _POOLS_LOCK:
        for (pid, _), pool in list(_POOLS.items()):
            if pid == os.getpid():
                pool.close()
        _POOLS.clear()


def _forget_parent_pools() -> None:
    global _POOLS_LOCK  # the parent's lock may have been held by another thread at fork time
    _POOLS_LOCK = threading.Lock()
    for pool in _POOLS.values():  # the parent's workers: close our pipe copies, never kill them
        for worker in pool._workers:
            worker.forget()
    _POOLS.clear()


if not _IN_WORKER:
    atexit.register(_close_pools)
    os.register_at_fork(after_in_child=_forget_parent_pools)


# ----------------------------------------------------------------------------------------------
# Inside the worker process
# ----------------------------------------------------------------------------------------------


_last_numeric: tuple | None = None  # (gold, pred, verdict) of the latest numeric comparison


def _numeric_equal(a, b, float_rounding=None, numeric_precision=None) -> bool:
    """Replacement for `math_verify.grader.sympy_numeric_eq` with relative tolerances.

    Exact vs exact: equal to 40 significant digits (rationals: exactly). Float vs exact: equal to
    6 significant digits of the exact value. Float vs float: 1e-9 relative. Expressions with free
    symbols, infinities and anything that fails to evaluate are left to math-verify's symbolic
    check (False here; an exception would make math-verify skip that check).
    """
    global _last_numeric
    try:
        verdict = _numeric_verdict(a, b)
    except Exception:  # noqa: BLE001
        verdict = None
    _last_numeric = (a, b, verdict)
    return bool(verdict)


def _symbolic_equal(a, b, _simplify_eq=None) -> bool:
    """`math_verify.grader.sympy_symbolic_eq` (`simplify(a - b) == 0`), skipped when pointless.

    math-verify calls it right after the numeric check on the same two objects. If that check
    evaluated both as constants and found them different, `simplify` cannot find their difference
    zero (it is not, to 60 digits), but it can spend 100 ms trying (`\\cos(71\\pi/180)` vs `2/3`).
    """
    last = _last_numeric
    if last is not None and last[0] is a and last[1] is b and last[2] is False:
        return False
    return _simplify_eq(a, b)


def _numeric_verdict(a, b) -> bool | None:
    """Equal / not equal by our tolerance rule; None where it does not apply. May raise."""
    import mpmath
    import sympy
    from sympy.matrices import MatrixBase

    if isinstance(a, MatrixBase) or isinstance(b, MatrixBase):
        a, b = sympy.Matrix(a.doit()), sympy.Matrix(b.doit())  # raises (-> None) if not matrices
        if a.shape != b.shape:
            return False
        verdicts = [_numeric_verdict(x, y) for x, y in zip(a, b)]
        return False if False in verdicts else None if None in verdicts else True
    a, b = a.doit(), b.doit()
    if not (isinstance(a, sympy.Expr) and isinstance(b, sympy.Expr)):
        return None
    if a.free_symbols or b.free_symbols:
        return None
    if isinstance(a, sympy.Rational) and isinstance(b, sympy.Rational):
        return a == b
    with mpmath.workdps(60):
        x, y = _to_mpc(a), _to_mpc(b)
        diff, a_float, b_float = abs(x - y), bool(a.atoms(sympy.Float)), bool(b.atoms(sympy.Float))
        if a_float and b_float:
            return bool(diff <= mpmath.mpf(float(FLOAT_REL_TOL)) * max(abs(x), abs(y)))
        if a_float or b_float:
            exact = abs(y) if a_float else abs(x)
            if exact == 0:
                return bool(diff == 0)
            # half a unit in the 6th significant digit of the exact value, plus float slack
            digit = mpmath.power(10, mpmath.floor(mpmath.log10(exact)) - FLOAT_DIGITS)
            return bool(diff <= 5 * digit * (1 + 1e-9))  # slack: binary floats of decimal input
        return bool(diff <= mpmath.mpf("1e-40") * max(abs(x), abs(y)))


def _read_in_part(text: str, parsed: list) -> bool:
    """A reference that names a variable but parsed to a bare number: the parser read only part
    of it (plain `2^floor(n/2)*floor(n/2)!` came out as 2 before `floor` was rewritten), and any
    answer equal to that part would pass. LaTeX command names and the constants e and i are not
    variables."""
    import sympy

    if not parsed or not isinstance(parsed[0], sympy.Number):
        return False
    letters = set(re.sub(r"\\[A-Za-z]+", " ", text)) & set(string.ascii_letters)
    return bool(letters - {"e", "i"})


def _to_mpc(value):
    import mpmath
    import sympy

    real, imag = sympy.N(value, 60).as_real_imag()
    as_mpf = lambda v: mpmath.mpf(sympy.Float(v, 60)._mpf_)
    return mpmath.mpc(as_mpf(real), as_mpf(imag))


def _use_two_stage_parsing() -> None:
    """Parse LaTeX with ANTLR's SLL prediction first, falling back to full LL on any error.

    The standard ANTLR speed-up (3-4x here: parsing is most of a check's time). ANTLR guarantees
    that a tree SLL returns is the tree LL would return; SLL raises (through latex2sympy's error
    listener) where it would need LL, and then we parse again with LL.
    """
    from antlr4.atn.PredictionMode import PredictionMode
    from latex2sympy2_extended.latex2sympy2 import _Latex2Sympy

    create_parser, parse_ll = _Latex2Sympy.create_parser, _Latex2Sympy.parse

    def create(self, latex: str):
        parser = create_parser(self, latex)
        if getattr(self, "_sll", False):
            parser._interp.predictionMode = PredictionMode.SLL
        return parser

    def parse(self, latex: str):
        self._sll = True
        try:
            return parse_ll(self, latex)
        except Exception:  # noqa: BLE001 - a syntax error in SLL mode: retry with LL
            pass
        finally:
            self._sll = False
        return parse_ll(self, latex)

    _Latex2Sympy.create_parser, _Latex2Sympy.parse = create, parse


def _make_checker():
    """Import and configure math-verify; returns `check(pred_latex, gold_latex) -> bool`."""
    import functools
    import logging

    import sympy
    from latex2sympy2_extended.latex2sympy2 import NormalizationConfig
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, grader, parse, verify

    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # "timeout disabled" etc.
    if not (hasattr(grader, "sympy_numeric_eq") and hasattr(grader, "sympy_symbolic_eq")):
        raise ImportError("math-verify changed: grader.sympy_numeric_eq or sympy_symbolic_eq is "
                          "gone; pin the version in pyproject's `math` extra")  # fmt: skip
    # both are looked up at call time by grader.sympy_expr_eq
    grader.sympy_numeric_eq = _numeric_equal
    grader.sympy_symbolic_eq = functools.partial(
        _symbolic_equal, _simplify_eq=grader.sympy_symbolic_eq
    )
    _use_two_stage_parsing()

    latex = LatexExtractionConfig(
        boxed_match_priority=0,
        normalization_config=NormalizationConfig(  # units: off, we strip them (module docstring)
            basic_latex=True, units=False, malformed_operators=True, nits=True, boxed="all",
            equations=False),
    )  # fmt: skip
    config = [latex, ExprExtractionConfig()]

    @functools.lru_cache(maxsize=4096)  # the k samples of a prompt share the reference
    def parsed(text: str) -> list:
        out = []
        for expr in parse(f"${text}$", extraction_config=config, parsing_timeout=None):
            units = [s for s in getattr(expr, "free_symbols", ()) if s.name == "i"]
            out.append(expr.subs({s: sympy.I for s in units}) if units else expr)
        return out

    def check(pred: str, gold: str) -> bool:
        gold_parsed, pred_parsed = parsed(gold), parsed(pred)
        if _read_in_part(gold, gold_parsed):
            return False  # only an exact match (decided before the worker) can pass
        return bool(gold_parsed and pred_parsed and verify(
            gold_parsed, pred_parsed, strict=True, allow_set_relation_comp=True,
            timeout_seconds=None))  # fmt: skip

    return check


# Common answer shapes, by kind, parsed once at start-up: ANTLR caches its predictions per grammar
# decision, so later parses of similar shapes are several times faster (start-up, ~1-2 s of CPU,
# is not part of any check's deadline). Written from the usual forms of competition answers, not
# from the labelled suite (whose strings stay unseen until the benchmark's cold pass).
_WARM_UP = (
    # numbers, fractions, roots, pi, powers
    "-7", "0.25", r"\frac{1}{2}", r"-\frac{3}{4}", r"\frac{-5}{2}", r"\frac{7}{100}", "2^{-9}",
    r"3\sqrt{2}", r"\sqrt[3]{5}", r"\frac{\sqrt{3}}{2}", r"\frac{1+\sqrt{5}}{2}", r"\sqrt{2}+1",
    r"\frac{\pi}{2}", r"2\pi", r"\frac{3\pi}{4}", r"4 \cdot \sqrt{2}", r"2 \times 5", "a/b",
    r"3/(2 \cdot \pi)", r"\frac{1}{3^{5}}", r"\frac{1}{2^{10}}+\frac{1}{2^{11}}", r"2.5 \times 10^{3}",
    r"\left(\frac{1}{2}\right)", "x^{-1}", "3^{x+1}", r"2\cdot 3^x", "e^{2}",
    # functions
    r"\sin^2 x", r"\cos(2x)", r"\cos (\frac{5\pi}{7})", r"2\sin x\cos x", r"\tan\theta",
    r"\log_2 8", r"\ln 2", r"\ln(e^3)", r"\log(5)", r"\binom{5}{2}", "5!", "|x|", "|x - 1|",
    # complex numbers
    "3+4i", r"\frac{1+i}{2}", r"\frac{1}{i}", "(1+i)^2", "-i", r"\sqrt{-4}", r"e^{i\pi}",
    r"2\text{i}",
    # intervals, sets, tuples, vectors, matrices
    "(1, 2)", r"[0, \infty)", r"(-\infty, 1) \cup (2, \infty)", "[-1, 1]", r"[\frac{1}{2}, 3)",
    r"(-\frac{1}{2}, 5]", r"\left(1, \frac{3}{2}\right)", "(0.5, 2)", r"\{1, 2\}", r"\{-1, 1\}",
    r"\{\frac{1}{2}, -3\}", "1, 2, 3", "(1, -2, 3)", r"\begin{pmatrix}1&2\\3&4\end{pmatrix}",
    r"\begin{pmatrix}0.5&1\end{pmatrix}", r"\begin{bmatrix}1\\0\end{bmatrix}",
    # equations, inequalities, plus-minus
    "x = 2", "y = 3x - 1", "f(x) = 2x+1", "x^2 + y^2 = 1", "2x - y + 1 = 0", r"k = \frac{1}{3}",
    r"x \le 3", "x > 0", "-1 < x < 2", r"x \in [1, 2]", r"x \in(0, 1)", r"\pm 2",
    r"1 \pm \sqrt{5}", r"\pm\sqrt{2}",
    # polynomials and symbolic forms
    "x^2+2x+1", "(x+1)(x-2)", "(x-1)^3", "x^3 - 1", "a^2 - b^2", r"\sin^3 x + \cos^3 x",
    # words, infinity, empty set
    r"\text{A}", r"\text{Monday}", "Friday", r"\text{yes}", r"\infty", r"-\infty", r"\emptyset",
)  # fmt: skip


def _exit_when_orphaned() -> None:
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)  # the caller died mid-check; don't keep computing for nobody

    threading.Thread(target=watch, daemon=True).start()


def _worker_main(memory_mb: int) -> None:
    import gc
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = memory_mb << 20 if hard == resource.RLIM_INFINITY else min(memory_mb << 20, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    _exit_when_orphaned()
    protocol = os.fdopen(os.dup(1), "wb")  # stdout is the protocol; stray prints go to stderr
    os.dup2(2, 1)
    check = _make_checker()
    for text in _WARM_UP:  # ANTLR's prediction cache makes later parses several times faster
        check(text, text)
    gc.freeze()  # start-up's ~300k objects (sympy): out of every later collection's way
    protocol.write(b"ready\n")
    protocol.flush()
    for line in sys.stdin.buffer:
        try:
            pairs = json.loads(line)["pairs"]
            reply = {"equal": any(check(pred, gold) for pred, gold in pairs)}
        except Exception as exc:  # noqa: BLE001 - report, stay alive
            reply = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        protocol.write(json.dumps(reply).encode() + b"\n")
        protocol.flush()
