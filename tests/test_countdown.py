"""The countdown task: its verifier against hand-made right and wrong answers and Python's own
arithmetic, its enumeration of every correct answer against a brute force over expression strings,
and its fixed, disjoint train / test split."""

import itertools
import re
import statistics
from fractions import Fraction

import pytest

from flowrl_jax import tasks
from flowrl_jax.evaluation import sampled
from flowrl_jax.tasks import countdown as cd


def brackets(items):
    """Every full bracketing of the operand strings `items`, with {} for the operators."""
    if len(items) == 1:
        yield items[0]
        return
    for i in range(1, len(items)):
        for left in brackets(items[:i]):
            for right in brackets(items[i:]):
                yield f"({left}{{}}{right})"


def brute_force(numbers, target):
    """Every expression string over ordered selections of the numbers, judged by Python's eval
    on Fractions, canonicalised: the reference for `solutions`."""
    found = set()
    for k in range(1, len(numbers) + 1):
        for picked in set(itertools.permutations(numbers, k)):
            for shape in brackets([str(n) for n in picked]):
                for ops in itertools.product("+-*/", repeat=k - 1):
                    text = shape.format(*ops)
                    fractional = re.sub(r"(\d+)", r"Fraction(\1)", text)
                    try:
                        if eval(fractional, {"Fraction": Fraction}) == target:
                            found.add(cd.canonical(cd.parse(text)))
                    except ZeroDivisionError:
                        pass
    return sorted(found)


@pytest.mark.parametrize(
    "numbers, target", [((2, 3, 7), 21), ((1, 4, 4, 6), 24), ((2, 2, 5, 9), 13)]
)
def test_the_enumeration_is_every_correct_answer(numbers, target):
    assert list(cd.solutions(numbers, target)) == brute_force(numbers, target)


def test_every_enumerated_answer_of_the_problems_verifies():
    problems = cd.problems(count=60, numbers=4, seed=5)
    for p in problems:
        for answer in p["answers"]:
            assert cd.check(answer, p["numbers"], p["target"]) == answer
            # Python's float arithmetic agrees, and each number is one of the given ones.
            assert eval(answer) == pytest.approx(p["target"], abs=1e-9)
            used = [int(x) for x in re.findall(r"\d+", answer)]
            assert all(used.count(n) <= p["numbers"].count(n) for n in used)


def test_one_answer_in_its_forms():
    forms = ["3*8", "8*3", "(8*3)", "((3)*(8))"]
    assert {cd.check(f, [3, 8, 5], 24) for f in forms} == {"3*8"}
    assert cd.check("9-1+2+3", [1, 2, 3, 9], 13) == cd.check("3+(2-(1-9))", [1, 2, 3, 9], 13)
    assert cd.check("(9-1)*3", [1, 3, 9], 24) != cd.check("3*8", [3, 8], 24)  # other arithmetic
    assert cd.check("8/(1/3)", [1, 3, 8], 24) == "3*8/1"  # exact fractions, a/(b/c) = a*c/b


@pytest.mark.parametrize(
    "response, why",
    [
        ("3*5", "makes 15, not 24"),  # wrong value
        ("3*8+3-3", "not one of the given numbers"),  # a number used twice
        ("4*6", "not one of the given numbers"),  # a number not given
        ("3*(8", "not an expression"),  # malformed
        ("3 8", "not an expression"),
        ("3**8", "is not a number or"),  # not one of + - * /
        ("-3+27", "is not a number or"),  # unary minus
        ("2.5*8", "is not a number or"),  # not an integer
        ("x*8", "is not a number or"),
        ("0x3*8", "is not a number or"),  # Python literals that are not decimal digits
        ("3*8_0", "is not a number or"),
        ("8*3/(5-5)", "division by zero"),
        ("", "1 to 48 characters"),
        ("(" * 30 + "3*8" + ")" * 30, "1 to 48 characters"),  # over-long
    ],
)
def test_wrong_answers_fail(response, why):
    with pytest.raises(cd.BadAnswer, match=re.escape(why)):
        cd.check(response, [3, 8, 5, 5], 24)


def test_the_split_is_fixed_disjoint_and_many_answered():
    train, test = tasks.get("countdown"), tasks.get("countdown", split="eval")
    key = lambda row: (tuple(row["numbers"]), row["target"])
    assert len(train.rows) + len(test.rows) == cd.PROBLEMS
    assert not {key(r) for r in train.rows} & {key(r) for r in test.rows}
    assert len(test.rows) > cd.PROBLEMS // 10 and all(r["split"] == "test" for r in test.rows)
    assert statistics.median(len(r["answers"]) for r in train.rows + test.rows) >= 4
    # The split is a function of the problem alone, not of the order or the count generated.
    assert all(cd.split_of(r["numbers"], r["target"]) == "test" for r in test.rows)
    assert cd.problems(count=600, numbers=4) == cd.problems(count=600, numbers=4)


def test_the_task_rewards_and_keys_answers():
    task = tasks.get("countdown")
    row = task.rows[0]
    right = row["answers"][0]
    assert task.prompts[0] == f"Make {row['target']} from {' '.join(map(str, row['numbers']))}."
    assert task.reward(f"I think\nAnswer: {right}", 0) == 1.0
    assert task.reward("Answer: 1+1", 0) == 0.0 and task.reward("", 0) == 0.0
    # Evaluation counts distinct correct answers by their canonical forms.
    texts = [[right, f"({right})", "1+1", row["answers"][-1]]]
    (problem,) = sampled.score(task, [0], texts, sampled.EvalSettings(k=4))["problems"]
    assert problem["mean@4"] == 0.75
    assert problem["correct_answers"] == len({row["answers"][0], row["answers"][-1]})
