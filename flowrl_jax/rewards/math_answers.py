"""Math rewards, as the FlowRL paper defines them.

Training: `answer_reward(response, gold)` reads the response's last `Answer: ...` line, normalises it
and the gold with `normalize_answer`, and compares the two strings exactly: +1 if equal, -1 otherwise
(also -1 with no `Answer:` line). No symbolic math, on purpose: that is the paper's training reward,
so `0.5` against `\\frac{1}{2}` or `\\sqrt{12}` against `2\\sqrt{3}` earn -1.

Evaluation: `math_verify_reward(response, gold)` asks Math-Verify (`parse` + `verify`) whether the
response's final answer equals the gold: 1 or 0. Math-Verify runs sympy, which can hang on an
expression such as `9^{9^{9^{9}}}` (a C-level big-integer power that no signal interrupts), so every
check runs in a worker process (`MathVerifier`) that is killed past a timeout; the verdict is then 0
and a warning names the response.

Math-Verify's extraction, as measured with math-verify 0.9.0 and latex2sympy2_extended 1.11.0
(tests/test_math_rewards.py pins it):
- of several bare `\\boxed{}`, the last counts, joined into one set with the boxes before it that are
  close (under 10 characters apart, or under 70 with `and` / `or` / `,` / `;` between, meant for
  `\\boxed{2} and \\boxed{3}`): `\\boxed{3}, but the answer is \\boxed{4}` reads as {3, 4} and matches
  neither 3 nor 4, while `\\boxed{3}. No: the answer is \\boxed{4}` reads as 4. Inside `$...$` each
  box is a separate match and the last one counts;
- with no box, the last `answer: ...`-style match counts (case-insensitive), else the last math;
- `$50\\%$` and `50%` match both a gold 50 and a gold 0.5, but a `\\%` outside `$...$` is plain text:
  `Answer: 50\\%` reads as 50 only;
- a trailing unit (`5 \\text{ m}`, `5 cm`) and a degree sign are ignored.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import os
import queue
import re
import signal
import threading

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------
# Training reward: the `Answer:` line, normalised, exact match.

# The prompt asks for `Answer: <answer>` on the last line, so the match is case-sensitive (`answer:`
# does not count: following the format is part of what the reward teaches). Leading spaces and
# markdown bold (`**Answer:**`, `**Answer**:`) are allowed because chat models add them unasked.
_ANSWER_LINE = re.compile(r"^[ \t]*(?:\*\*)?Answer(?:\*\*)?:(?:\*\*)?[ \t]*(.*)$", re.MULTILINE)


def extract_answer_line(response: str) -> str | None:
    """The text after `Answer:` on the LAST line that starts with it (a model that corrects itself
    writes the final answer last), stripped, or None if no line does."""
    found = _ANSWER_LINE.findall(response)
    if not found:
        return None
    text = found[-1].strip()
    if text.endswith("**"):  # the closing bold of `**Answer: 5**`
        text = text[:-2].rstrip()
    return text


# Wrappers whose content is the answer: `\boxed{5}` -> `5`, `\text{Evelyn}` -> `Evelyn`. Boxes are
# unwrapped first, so the unit rules see `\boxed{5 \text{ m}}` as `5 \text{ m}`.
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_WRAPPER = re.compile(r"\\(?:boxed|fbox|text|textbf|textrm|mbox|mathrm)\s*\{")
# A unit after the answer: `5 \text{ meters}`, `3\mbox{ cm}^2`.
_TEXT_UNIT = re.compile(r"^(.*\S)\s*\\(?:text|mbox|mathrm)\s*\{[^{}]*\}(?:\^\{?\d\}?)?$")
# A plain number and one word: `5 cm`, `12 dollars`. At least two letters after a space, so `3i`
# (complex) stays; `2 pi` is the one word that is math, not a unit.
_WORD_UNIT = re.compile(r"^(-?[\d.,]+(?:/\d+)?)\s+(?!pi\b)[A-Za-z]{2,}\.?(?:\^\{?\d\}?)?$")
# Dropped: spacing (`\!`, `\,` also in `1\,000`), sizing, degrees, percent and dollar signs.
_DROPPED = re.compile(
    r"\\[!,;: ]|~|\\(?:left|right|displaystyle)(?![A-Za-z])|\^\{?\\circ\}?|°|\\degree|\\?%|\\\$"
)
_ASSIGNMENT = re.compile(r"^[A-Za-z]=(?P<rhs>[^=]+)$")  # `x=3` -> `3` (spaces already removed)
_THOUSANDS = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")  # `1,000` -> `1000`
_INT_FRACTION = re.compile(r"^(-?)(\d+)/(\d+)$")  # `1/2` -> `\frac{1}{2}`
_TOKEN = re.compile(r"\\[A-Za-z]+|.", re.DOTALL)  # one TeX token: a command or one character
_FRAC_OR_SQRT = re.compile(r"\\(frac|sqrt)(?![A-Za-z])")


def _closing_brace(s: str, i: int) -> int:
    """Index of the `}` that closes the `{` at s[i], or -1 if it is not closed. `\\{` is skipped."""
    depth = 0
    k = i
    while k < len(s):
        if s[k] == "\\":
            k += 2
            continue
        if s[k] == "{":
            depth += 1
        elif s[k] == "}":
            depth -= 1
            if depth == 0:
                return k
        k += 1
    return -1


def _unwrap(s: str, wrapper: re.Pattern) -> str:
    """Replace every `\\boxed{X}` (or whatever `wrapper` matches, up to its `{`) by X, nested too."""
    while m := wrapper.search(s):
        end = _closing_brace(s, m.end() - 1)
        if end < 0:
            return s
        s = s[: m.start()] + s[m.end() : end] + s[end + 1 :]
    return s


def _brace_arguments(s: str) -> str:
    """`\\frac12` -> `\\frac{1}{2}`, `\\sqrt2` -> `\\sqrt{2}`: TeX lets a one-token argument go
    unbraced, and both spellings are common. Braced arguments are rewritten recursively."""
    out = []
    i = 0
    while i < len(s):
        m = _FRAC_OR_SQRT.match(s, i)
        if not m:
            out.append(s[i])
            i += 1
            continue
        out.append(m.group())
        i = m.end()
        if m.group(1) == "sqrt" and s.startswith("[", i) and "]" in s[i:]:  # \sqrt[3]{x}
            close = s.index("]", i)
            out.append(s[i : close + 1])
            i = close + 1
        for _ in range(2 if m.group(1) == "frac" else 1):
            if i >= len(s):
                break
            if s[i] == "{":
                end = _closing_brace(s, i)
                if end < 0:
                    return "".join(out) + s[i:]
                out.append("{" + _brace_arguments(s[i + 1 : end]) + "}")
                i = end + 1
            else:
                token = _TOKEN.match(s, i).group()
                out.append("{" + token + "}")
                i += len(token)
    return "".join(out)


def _strip_delimiters(s: str) -> str:
    s = s.strip()
    if s.endswith("."):  # `4.` at the end of a sentence; `0.5` keeps its point
        s = s[:-1].rstrip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
            s = s[len(left) : len(s) - len(right)].strip()
            break
    if s.endswith("."):  # `$4$.` and `$4.$`
        s = s[:-1].rstrip()
    return s


def normalize_answer(text: str) -> str:
    """A canonical spelling of an answer, for exact comparison. Notation only, never math: values that
    are equal but written differently (`0.5` and `\\frac12`, `\\sqrt{12}` and `2\\sqrt3`, `\\{1,2\\}` and
    `\\{2,1\\}`) stay different.

    In order: strip whitespace, a trailing period and surrounding `$...$` / `\\(...\\)` / `\\[...\\]`;
    unwrap `\\boxed{}` (nested too); drop a trailing unit (`5 \\text{ meters}`, `5 cm`); unwrap the
    remaining `\\text{}`-like wrappers; drop `\\left`/`\\right`, spacing commands (`\\!`, `\\,`),
    degree signs (`^\\circ`, `°`), percent and dollar signs; remove all whitespace; `\\dfrac`/`\\tfrac`
    -> `\\frac`; brace one-token arguments (`\\frac12` -> `\\frac{1}{2}`, `\\sqrt2` -> `\\sqrt{2}`);
    drop a single-letter assignment (`x = 3` -> `3`); thousands commas in a plain number (`1,000` ->
    `1000`); an integer fraction `a/b` -> `\\frac{a}{b}`; a leading zero (`.5` -> `0.5`).
    """
    s = _strip_delimiters(text)
    s = _unwrap(s, _BOXED)
    s = _strip_delimiters(s)  # `\boxed{$5$}` and `\boxed{5}.`
    for unit in (_TEXT_UNIT, _WORD_UNIT):
        s = unit.sub(r"\1", s)
    s = _unwrap(s, _WRAPPER)
    s = _DROPPED.sub(" ", s)
    s = re.sub(r"\s+", "", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _brace_arguments(s)
    if m := _ASSIGNMENT.match(s):
        s = m.group("rhs")
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    s = _INT_FRACTION.sub(r"\1\\frac{\2}{\3}", s)
    s = re.sub(r"^(-?)\.(\d)", r"\g<1>0.\2", s)
    return s


def answer_reward(response: str, gold: str) -> float:
    """The paper's math training reward: +1 if the last `Answer:` line equals the gold after
    `normalize_answer`, else -1 (also -1 with no `Answer:` line or an empty one)."""
    answer = extract_answer_line(response)
    if not answer:
        return -1.0
    predicted = normalize_answer(answer)
    return 1.0 if predicted and predicted == normalize_answer(gold) else -1.0


def last_boxed(response: str) -> str | None:
    """The content of the last closed `\\boxed{}` (outermost), or None."""
    found = None
    for m in _BOXED.finditer(response):
        end = _closing_brace(response, m.end() - 1)
        if end > 0 and (found is None or m.start() > found[1]):
            found = (response[m.end() : end], end)
    return found and found[0]


def final_answer(response: str) -> str | None:
    """The response's final answer as a comparison key (maj@k, distinct answers): the last
    `\\boxed{}`, else the last `Answer:` line, normalised; None if it has neither."""
    answer = last_boxed(response) or extract_answer_line(response)
    return normalize_answer(answer) or None if answer else None


# ---------------------------------------------------------------------------------------------------
# Evaluation reward: Math-Verify in worker processes that a timeout kills.


def _gold_latex(gold: str) -> str:
    """Math-Verify only reads math it can anchor: a bare `\\frac12` or `(1,2]` parses to nothing. A
    gold that is not already delimited is boxed (the extraction pattern Math-Verify tries first)."""
    if any(mark in gold for mark in ("$", "\\boxed", "\\(", "\\[")):
        return gold
    return "\\boxed{" + gold + "}"


def _worker_main(conn) -> None:
    """A worker: answer (response, gold) requests on `conn` with 1.0 / 0.0 until EOF."""
    # Ctrl-C reaches the whole process group; the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from math_verify import parse, verify

    # Math-Verify's own timeouts are signal.alarm, which cannot interrupt a C-level computation, so
    # they are off (None) and the parent's kill is the one timeout; this hides its warning about it.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    conn.send("ready")
    while True:
        try:
            request = conn.recv()
        except EOFError:  # the parent is gone
            return
        response, gold = request
        try:
            gold_parsed = parse(_gold_latex(gold), parsing_timeout=None)
            answer = parse(response, parsing_timeout=None)
            verdict = 1.0 if verify(gold_parsed, answer, timeout_seconds=None) else 0.0
        except Exception:  # a malformed answer is a wrong answer, not a crash
            verdict = 0.0
        conn.send(verdict)


class _Worker:
    def __init__(self, context):
        self.conn, child_conn = context.Pipe()
        self.process = context.Process(
            target=_worker_main, args=(child_conn,), daemon=True, name="math-verify"
        )
        self.process.start()
        child_conn.close()  # else a dead worker's pipe never reads as EOF here
        self.ready = False  # set once its "ready" (math_verify imported) has been read

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=2.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


class MathVerifier:
    """Math-Verify verdicts (1.0 / 0.0) from `workers` spawned processes, each check limited to
    `timeout` seconds. Safe to call from many threads at once: a call takes an idle worker (waiting
    for one if all are busy), so at most `workers` checks run at a time. A check past its timeout
    kills its worker, starts a fresh one, logs a warning and returns 0.

    Processes are spawned, not forked: the parent holds JAX's threads, and a fork copies their locks
    in whatever state they are. The cost is that each worker imports math_verify (~1-2 s) and, as
    spawn does, the parent's `__main__` module under the name `__mp_main__`; the clock of a check
    starts only once its worker reports ready, so that start-up never counts as a timeout.
    """

    def __init__(self, workers: int = 4, timeout: float = 5.0, startup_timeout: float = 120.0):
        if workers < 1 or timeout <= 0:
            raise ValueError(
                f"MathVerifier needs workers >= 1 and timeout > 0, got {workers=}, {timeout=}"
            )
        self.timeout = timeout
        self.startup_timeout = startup_timeout  # how long a fresh worker may take to import
        self._context = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()  # guards _workers and _closed
        self._closed = False
        self._workers: set[_Worker] = set()
        self._idle: queue.Queue[_Worker] = queue.Queue()
        for _ in range(workers):
            self._idle.put(self._start_worker())

    def _start_worker(self) -> _Worker:
        with self._lock:
            if self._closed:
                raise RuntimeError("MathVerifier is closed")
            worker = _Worker(self._context)
            self._workers.add(worker)
            return worker

    def _replace(self, worker: _Worker) -> None:
        with self._lock:
            self._workers.discard(worker)
        worker.kill()
        try:
            self._idle.put(self._start_worker())
        except RuntimeError:  # closed meanwhile: nothing to replace
            pass

    def _take(self) -> _Worker:
        while True:
            if self._closed:
                raise RuntimeError("MathVerifier is closed")
            try:
                worker = self._idle.get(timeout=0.5)
            except queue.Empty:
                continue
            if worker.ready:
                return worker
            # A fresh worker: wait for its import, outside the timeout of the check.
            try:
                if worker.conn.poll(self.startup_timeout) and worker.conn.recv() == "ready":
                    worker.ready = True
                    return worker
            except (EOFError, OSError):
                pass
            self._replace(worker)
            raise RuntimeError(
                f"a math-verify worker did not start within {self.startup_timeout:.0f} s"
            )

    def __call__(self, response: str, gold: str, timeout: float | None = None) -> float:
        """1.0 if Math-Verify finds the response's final answer equal to `gold`, else 0.0 (also on a
        timeout or a crashed worker). `timeout` overrides the verifier's for this one check."""
        timeout = self.timeout if timeout is None else timeout
        worker = self._take()
        try:
            worker.conn.send((response, gold))
            if worker.conn.poll(timeout):
                verdict = worker.conn.recv()
                self._idle.put(worker)
                return verdict
            why = f"timed out after {timeout:.1f} s"
        except (EOFError, OSError) as e:  # the worker died (out of memory, killed by close())
            why = f"lost its worker ({type(e).__name__})"
        if not self._closed:
            log.warning(
                "math-verify check %s; verdict 0, worker replaced. Response starts: %r",
                why,
                response[:100],
            )
        self._replace(worker)
        return 0.0

    def close(self) -> None:
        """Stop every worker. Idempotent; calls afterwards raise RuntimeError."""
        with self._lock:
            self._closed = True
            workers, self._workers = list(self._workers), set()
        for worker in workers:
            worker.kill()

    def __enter__(self) -> MathVerifier:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_default: MathVerifier | None = None
_default_lock = threading.Lock()


def math_verify_reward(response: str, gold: str, timeout: float = 5.0) -> float:
    """The paper's math evaluation reward, 1.0 / 0.0, from a shared `MathVerifier` that the first call
    starts (up to 4 workers, fewer on a small machine) and interpreter exit closes."""
    global _default
    with _default_lock:
        if _default is None:
            _default = MathVerifier(workers=min(4, os.cpu_count() or 1), timeout=timeout)
            atexit.register(_default.close)
    return _default(response, gold, timeout=timeout)
