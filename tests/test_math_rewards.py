"""Math rewards on a table of real answer forms, each verdict decided by hand for both the training
reward (`Answer:` line, exact match after normalising: +1 / -1) and the evaluation reward
(Math-Verify: 1 / 0); then the worker pool: a pathological expression times out, and threads share
the pool. One verifier (2 spawned workers) serves the whole module to keep start-up to one import."""

import logging
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from flowrl_jax.rewards.math_answers import (
    MathVerifier,
    answer_reward,
    extract_answer_line,
    final_answer,
    math_verify_reward,
    normalize_answer,
)

# (response, gold, answer_reward, math_verify_reward)
ROWS = [
    # integers and signs
    ("2 + 2 = 4.\nAnswer: 4", "4", 1, 1),
    ("Answer: -3", "-3", 1, 1),
    ("Answer: 3", "-3", -1, 0),
    ("Answer: 8", "7", -1, 0),
    ("I could not solve it.", "7", -1, 0),  # no answer at all
    # thousands separators, both directions
    ("Answer: 1,000", "1000", 1, 1),
    ("Answer: 1000", "1,000", 1, 1),
    # fractions: notation is normalised for training, value is not (0.5 is not \frac12 there)
    ("Answer: 0.5", "\\frac{1}{2}", -1, 1),
    ("Answer: $\\dfrac12$", "\\frac{1}{2}", 1, 1),
    ("Answer: 1/2", "\\frac12", 1, 1),
    ("Answer: $-\\frac{1}{2}$", "-1/2", 1, 1),
    ("Answer: $\\frac{\\pi}{2}$", "\\pi/2", -1, 1),  # only integer a/b becomes \frac{a}{b}
    ("Answer: \\frac{1}{2}", "$\\frac{1}{2}$", 1, 1),  # gold already in $...$
    ("Answer: \\frac{1}{2}", "\\boxed{\\frac12}", 1, 1),  # gold already boxed
    # roots
    ("Answer: $\\sqrt 2$", "\\sqrt{2}", 1, 1),
    ("Answer: $2\\sqrt{3}$", "2\\sqrt3", 1, 1),
    ("Answer: $\\sqrt{12}$", "2\\sqrt{3}", -1, 1),  # equal value, different form
    # intervals: open and closed ends matter to both
    ("Answer: $(1, 2]$", "[1,2]", -1, 0),
    ("Answer: $(1, 2]$", "(1,2]", 1, 1),
    ("Answer: $\\left( 1, 2 \\right]$", "(1,2]", 1, 1),
    ("Answer: $(-\\infty, 3)$", "(-\\infty, 3]", -1, 0),
    # tuples and sets: order matters to exact match; Math-Verify compares sets as sets
    ("Answer: $(1, 2)$", "(1,2)", 1, 1),
    ("Answer: $(2, 1)$", "(1,2)", -1, 0),
    ("Answer: $\\{1, 2\\}$", "\\{2, 1\\}", -1, 1),
    # units, degrees, percent
    ("Answer: $5 \\text{ meters}$", "5", 1, 1),
    ("Answer: 5 cm", "5", 1, 1),
    ("Answer: $90^\\circ$", "90", 1, 1),
    ("Answer: 90°", "90^\\circ", 1, 1),
    ("Answer: 50\\%", "50", 1, 1),
    ("Answer: $50\\%$", "0.5", -1, 1),  # Math-Verify accepts 50% as 50 and as 0.5 ...
    ("Answer: 50%", "0.5", -1, 1),
    ("Answer: 50\\%", "0.5", -1, 0),  # ... but reads a `\\%` outside $...$ as plain text: 50
    # assignments
    ("Answer: $x = 3$", "3", 1, 1),
    # boxes, nested
    ("Answer: $\\boxed{\\frac{\\sqrt{3}}{2}}$", "\\frac{\\sqrt3}{2}", 1, 1),
    ("Answer: \\boxed{\\boxed{5}}", "5", 1, 1),
    (
        "So the answer is \\boxed{\\frac{\\sqrt{3}}{2}}.",
        "\\frac{\\sqrt{3}}{2}",
        -1,
        1,
    ),  # no Answer:
    # several answers in one response. Math-Verify takes the last bare box and joins to it the boxes
    # before it that are close: under 10 characters apart, or under 70 with `and`/`or`/`,`/`;` between
    # (meant for "\boxed{2} and \boxed{3}"). So a response that changes its mind after a comma earns 0
    # ({3, 4} is not 4), one that does it after a colon earns 1; inside $...$ the last box counts.
    # For training the last `Answer:` line counts.
    ("I first thought \\boxed{3}, but the answer is \\boxed{4}.", "4", -1, 0),
    ("I first thought \\boxed{3}. No: the answer is \\boxed{4}.", "4", -1, 1),
    ("I first thought $\\boxed{3}$, but the answer is $\\boxed{4}$.", "4", -1, 1),
    ("The roots are \\boxed{2} and \\boxed{3}.\nAnswer: 2, 3", "2, 3", 1, 1),
    ("The roots are \\boxed{2} and \\boxed{3}.\nAnswer: 2, 3", "3, 2", -1, 1),
    ("Answer: 3\nActually, no.\nAnswer: 4", "4", 1, 1),
    ("Answer: 3\nActually, no.\nAnswer: 4", "3", -1, 0),
    # format: `Answer:` is case-sensitive for training; Math-Verify's anchor is not
    ("answer: 4", "4", -1, 1),
    ("**Answer:** $\\frac{\\sqrt{2}}{2}$", "\\frac{\\sqrt2}{2}", 1, 1),
]


@pytest.fixture(scope="module")
def verifier():
    with MathVerifier(workers=2, timeout=10.0) as v:
        yield v


@pytest.mark.parametrize("response, gold, train, _", ROWS)
def test_answer_reward(response, gold, train, _):
    assert answer_reward(response, gold) == train


@pytest.mark.parametrize("response, gold, _, evaluation", ROWS)
def test_math_verify_reward(verifier, response, gold, _, evaluation):
    assert verifier(response, gold) == evaluation


@pytest.mark.parametrize(
    "response, expected",
    [
        ("Answer: 3\nwait\nAnswer: 4", "4"),  # the last line wins
        ("  **Answer:** $5$", "$5$"),
        ("**Answer**: 7\nThat is all.", "7"),
        ("**Answer: 6**", "6"),
        ("answer: 4", None),  # case-sensitive
        ("The Answer: is in the middle of a line", None),
        ("no answer here", None),
        ("Answer:", ""),
    ],
)
def test_extract_answer_line(response, expected):
    assert extract_answer_line(response) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("$\\dfrac12$.", "\\frac{1}{2}"),
        ("\\boxed{5 \\text{ cm}^2}", "5"),
        ("1\\,000", "1000"),
        ("\\$12", "12"),
        (".5", "0.5"),
        ("3i", "3i"),  # not a unit
        ("\\text{Evelyn}", "Evelyn"),
        ("\\sqrt[3]{8}", "\\sqrt[3]{8}"),
        ("\\frac\\pi2", "\\frac{\\pi}{2}"),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_pathological_expression_times_out_and_pool_recovers(verifier, caplog):
    # 9^(9^(9^9)) is a big-integer power in C: no signal stops it, only killing the process does.
    response = "Answer: $9^{9^{9^{9}}}$"
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="flowrl_jax.rewards.math_answers"):
        assert verifier(response, "1", timeout=1.5) == 0.0
    assert time.monotonic() - start < 1.5 + 2.0
    assert "timed out" in caplog.text and "9^{9^{9^{9}}}" in caplog.text
    assert verifier("Answer: 4", "4") == 1.0  # the replacement worker answers
    assert verifier("Answer: 5", "4") == 0.0


def test_concurrent_calls_from_threads(verifier):
    # 40 checks from 8 threads on 2 workers, while one worker is stuck on a pathological check: the
    # other worker serves the rest, and every verdict is the right one.
    cases = [(f"Answer: {n}", str(n if n % 3 else n + 1), float(n % 3 != 0)) for n in range(40)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        stuck = pool.submit(verifier, "Answer: $9^{9^{9^{9}}}$", "1", timeout=1.5)
        verdicts = list(pool.map(lambda c: verifier(c[0], c[1]), cases))
        assert stuck.result() == 0.0
    assert verdicts == [expected for _, _, expected in cases]


def test_closed_verifier_refuses():
    v = MathVerifier(workers=1, timeout=5.0)
    v.close()
    v.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        v("Answer: 1", "1")


def test_module_level_reward_uses_a_shared_verifier():
    assert math_verify_reward("The answer is $\\frac{2}{4}$.", "1/2") == 1.0
    assert math_verify_reward("The answer is $3$.", "1/2") == 0.0


@pytest.mark.parametrize(
    "response, key",
    [
        ("first \\boxed{2}, then \\boxed{\\boxed{\\dfrac12}}", "\\frac{1}{2}"),  # last, outermost
        ("Answer: 1,000", "1000"),  # no box: the Answer line
        ("\\boxed{5} and later\nAnswer: 6", "5"),  # a box wins over the line
        ("no answer at all", None),
        ("\\boxed{}", None),
    ],
)
def test_final_answer_key(response, key):
    assert final_answer(response) == key
