"""Countdown: reach a target from a few small numbers with + - * / and parentheses, each number used
at most once. A problem has many correct answers, and the task enumerates all of them, so how much of
a problem's correct set a policy covers (and how it spreads over it) is measured exactly.

Two answers are the same answer when they are the same arithmetic up to the order of a sum's terms
or a product's factors and the grouping of repeated + - or * /: `3*8`, `8*3` and `(8*3)` are one
answer, `3*8` and `(9-1)*3` two. `canonical` computes that form; it is also a valid expression, the
one the task prints. Arithmetic is exact (fractions: intermediate values need not be whole).

Problems are fixed: `problems(...)` generates them from its own seed, each with its complete set of
correct answers, and splits them once into train and test by a hash of the problem, so the split
does not depend on the order or the count generated. Test problems are never trained on. The
built-in task has PROBLEMS problems of 4 numbers from 1..9 and a target in 10..60 that at least 4
answers reach (2,374 train, 626 test; median 6 answers), asked as `Make 32 from 2 2 4 7.`
"""

from __future__ import annotations

import ast
import functools
import hashlib
import warnings
from fractions import Fraction

import numpy as np

MAX_ANSWER_CHARS = 48  # longer responses are wrong (an answer is short by construction)
_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


class BadAnswer(ValueError):
    """A response that is not an admissible answer: not an expression of the given numbers."""


# --- expressions: ('n', k) leaves and (op, left, right) nodes -----------------------------------


def parse(text: str) -> tuple:
    """An answer's expression tree. Only integers, + - * / and parentheses are admitted."""
    text = text.strip()
    if not text or len(text) > MAX_ANSWER_CHARS:
        raise BadAnswer(f"an answer has 1 to {MAX_ANSWER_CHARS} characters, not {len(text)}")
    try:
        with warnings.catch_warnings():  # "2 3x" warns of a bad literal before failing; quiet
            warnings.simplefilter("ignore", SyntaxWarning)
            tree = ast.parse(text, mode="eval").body
    except SyntaxError as e:
        raise BadAnswer(f"not an expression: {e.msg}") from None

    def build(node):
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return (_OPS[type(node.op)], build(node.left), build(node.right))
        if isinstance(node, ast.Constant) and type(node.value) is int and node.value >= 0:
            # Plain decimal digits only: Python also reads 0x8, 0o10 and 0_8 as numbers.
            if ast.get_source_segment(text, node).isdigit():
                return ("n", node.value)
        raise BadAnswer(f"{ast.unparse(node)!r} is not a number or + - * / of two expressions")

    return build(tree)


def leaves(tree) -> list[int]:
    return [tree[1]] if tree[0] == "n" else leaves(tree[1]) + leaves(tree[2])


def value(tree) -> Fraction:
    if tree[0] == "n":
        return Fraction(tree[1])
    a, b = value(tree[1]), value(tree[2])
    op = tree[0]
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if b == 0:
        raise BadAnswer("division by zero")
    return a / b


def canonical(tree) -> str:
    """The answer's canonical form (see the module doc), itself a valid expression."""
    return _text(_form(tree))


def _form(tree):
    """A tree as canonical parts: ('n', text), or ('sum' | 'prod', positive, negative operands)."""
    if tree[0] == "n":
        return "n", str(tree[1])
    return _combine(tree[0], _form(tree[1]), _form(tree[2]))


# --- problems ----------------------------------------------------------------------------------


def solutions(numbers: tuple[int, ...], target: int) -> tuple[str, ...]:
    """Every correct answer of a problem, canonical, sorted: all + - * / expressions over
    sub-multisets of `numbers` (each used at most once) whose value is `target`."""
    return _by_value(tuple(sorted(numbers))).get(Fraction(target), ())


@functools.lru_cache(maxsize=4096)
def _by_value(numbers: tuple[int, ...]) -> dict[Fraction, tuple[str, ...]]:
    """value -> the canonical forms that make it, sorted."""
    out: dict[Fraction, list[str]] = {}
    for text, v in _reachable(numbers).items():
        out.setdefault(v, []).append(text)
    return {v: tuple(sorted(texts)) for v, texts in out.items()}


@functools.lru_cache(maxsize=4096)
def _reachable(numbers: tuple[int, ...]) -> dict[str, Fraction]:
    """canonical form -> value, for every expression over every sub-multiset of `numbers`.

    Built bottom-up over sets of positions, each expression kept as its canonical parts (`_form`),
    so that combining two is a merge of sorted tuples, not a walk of trees."""
    n = len(numbers)
    by_set: dict[int, dict[str, tuple]] = {}  # bit mask of positions -> text -> (form, value)
    for mask in range(1, 1 << n):
        members = [i for i in range(n) if mask >> i & 1]
        if len(members) == 1:
            k = numbers[members[0]]
            by_set[mask] = {str(k): (("n", str(k)), Fraction(k))}
            continue
        out = {}
        sub = (mask - 1) & mask
        while sub:  # every split into two non-empty parts, both orders
            for a, va in by_set[sub].values():
                for b, vb in by_set[mask ^ sub].values():
                    for op in "+-*/":
                        if op == "/" and vb == 0:
                            continue
                        form = _combine(op, a, b)
                        text = _text(form)
                        if text not in out:
                            v = va + vb if op == "+" else va - vb if op == "-" else va * vb
                            out[text] = (form, va / vb if op == "/" else v)
            sub = (sub - 1) & mask
        by_set[mask] = out
    return {text: v for forms in by_set.values() for text, (_, v) in forms.items()}


def _text(form) -> str:
    kind, pos, neg = form if form[0] != "n" else ("n", (form[1],), ())
    if kind == "n":
        return pos[0]
    glue = "+-" if kind == "sum" else "*/"
    return glue[0].join(pos) + "".join(glue[1] + t for t in neg)


def _parts(form, kind: str) -> tuple[tuple, tuple]:
    """`form` as the (positive, negative) operands of a `kind` node."""
    if form[0] == kind:
        return form[1], form[2]
    text = _text(form)
    return ((f"({text})" if kind == "prod" and form[0] == "sum" else text),), ()


def _combine(op: str, a, b):
    kind = "sum" if op in "+-" else "prod"
    (ap, an), (bp, bn) = _parts(a, kind), _parts(b, kind)
    if op in "-/":
        bp, bn = bn, bp
    return (kind, tuple(sorted(ap + bp)), tuple(sorted(an + bn)))


def check(response: str, numbers, target: int) -> str:
    """The canonical form of a correct answer; BadAnswer says why a response is not one."""
    tree = parse(response)
    pool = list(numbers)
    for k in leaves(tree):
        if k not in pool:
            raise BadAnswer(f"{k} is not one of the given numbers {sorted(numbers)} left to use")
        pool.remove(k)
    got = value(tree)
    if got != target:
        raise BadAnswer(f"the expression makes {got}, not {target}")
    return canonical(tree)


def split_of(numbers, target: int, test_percent: int = 20) -> str:
    """'train' or 'test', fixed by a hash of the problem."""
    digest = hashlib.sha256(f"{sorted(numbers)}->{target}".encode()).digest()
    return "test" if digest[0] * 100 // 256 < test_percent else "train"


def problems(
    count: int = 600,
    numbers: int = 3,
    largest: int = 9,
    targets: tuple[int, int] = (10, 60),
    min_answers: int = 4,
    seed: int = 20261202,
) -> list[dict]:
    """`count` distinct problems, each {"numbers", "target", "answers", "split"}: `numbers` draws
    from 1..`largest` and a target in `targets` that at least `min_answers` different answers
    reach, chosen uniformly among such targets."""
    rng = np.random.default_rng(seed)
    out, seen = [], set()
    for _ in range(count * 50):
        if len(out) == count:
            break
        drawn = tuple(sorted(int(x) for x in rng.integers(1, largest + 1, numbers)))
        choices = sorted(
            int(v)
            for v, answers in _by_value(drawn).items()
            if v.denominator == 1
            and targets[0] <= v <= targets[1]
            and len(answers) >= min_answers
            and (drawn, int(v)) not in seen
        )
        if not choices:
            continue
        target = int(rng.choice(choices))
        seen.add((drawn, target))
        out.append(
            {
                "numbers": list(drawn),
                "target": target,
                "answers": list(solutions(drawn, target)),
                "split": split_of(drawn, target),
            }
        )
    if len(out) < count:
        raise ValueError(
            f"countdown: only {len(out)} of {count} problems exist with these settings"
        )
    return out


# --- the task ----------------------------------------------------------------------------------

# Short on purpose: with the chat template it is about 20 tokens, so prompts pad to the 32-token
# bucket and a step of the default job spends its compute on the answers. The rules (each number at
# most once; + - * / and parentheses) are the verifier's, stated in the module doc, not repeated in
# every prompt.
PROMPT = "Make {target} from {numbers}."
PROBLEMS = 3000  # generated problems, split about 80 / 20 into train and test


def answer_of(response: str) -> str:
    """The answer in a response: its last non-empty line, without a leading 'Answer:'."""
    lines = [line.strip() for line in response.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    return last.removeprefix("Answer:").strip()


def answer_key(rows: list[dict], response: str, row: int) -> str | None:
    """The canonical form of a correct response (the identity of the answer), else None."""
    try:
        return check(answer_of(response), rows[row]["numbers"], rows[row]["target"])
    except BadAnswer:
        return None


def _reward(rows: list[dict], response: str, row: int) -> float:
    return float(answer_key(rows, response, row) is not None)


def demonstrations(rows: list[dict], seed: int, per_problem: int = 4, skew: float = 1.0):
    """SFT demonstrations: `per_problem` draws of a correct answer for each problem of `rows`. The
    draw is skewed on purpose, so the warm-up model starts RL with uneven preferences among a
    problem's answers, as a pretrained model does: the answers are put in a random order of their
    own per problem (seeded by `seed` and the problem), and rank j is drawn with probability
    proportional to 1 / (j + 1)^skew (skew 1: Zipf; 0: uniform). The same answer may be drawn
    twice, and some answers of a problem are never shown."""
    out = []
    for i, row in enumerate(rows):
        answers = row["answers"]
        rng = np.random.default_rng([seed, i])
        order = rng.permutation(len(answers))
        weights = 1.0 / (np.arange(len(answers)) + 1.0) ** skew
        for d, rank in enumerate(rng.choice(len(answers), per_problem, p=weights / weights.sum())):
            out.append(
                {
                    "messages": [{"role": "user", "content": row["prompt"]}],
                    "response": answers[order[rank]],
                    "source": f"{row['source']}#{d}",
                }
            )
    return out


def task(split: str = "train"):
    """The built-in countdown problems of one split ('train'; 'eval' is the test split). Each row:
    numbers, target, every correct answer (canonical, sorted) and its source."""
    from flowrl_jax.tasks.base import Task

    if split not in ("train", "eval"):
        raise ValueError(f"split={split!r}: expected 'train' or 'eval'")
    want = "test" if split == "eval" else "train"
    rows = [
        p | {"source": f"countdown:{i}", "prompt": _prompt(p)}
        for i, p in enumerate(_all_problems())
        if p["split"] == want
    ]
    return Task(
        "countdown",
        [r["prompt"] for r in rows],
        functools.partial(_reward, rows),
        1.0,
        rows,
        answer_key=functools.partial(answer_key, rows),
        demonstrations=functools.partial(demonstrations, rows) if split == "train" else None,
    )


def _prompt(problem: dict) -> str:
    return PROMPT.format(numbers=" ".join(map(str, problem["numbers"])), target=problem["target"])


@functools.cache
def _all_problems() -> tuple[dict, ...]:
    return tuple(problems(count=PROBLEMS, numbers=4))
