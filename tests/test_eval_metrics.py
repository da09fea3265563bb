"""Evaluation metrics against independent references: exact combinatorics and Monte-Carlo for
pass@k, hand-counted n-grams for the diversity metrics, and a round trip for the report files."""

import itertools
import json
import math
import os
from fractions import Fraction

import numpy as np
import pytest

from flowrl_jax.evaluation import (
    aggregate,
    distinct_correct_answers,
    distinct_n,
    distinct_solution_paths,
    maj_at_k,
    majority_answer,
    markdown_table,
    mean_at_k,
    mean_pairwise_similarity,
    pass_at_k,
    pass_at_k_curve,
    problem_metrics,
    similarity,
    write_report,
)


def exact_pass_at_k(n, c, k):
    # The definition, in exact rational arithmetic: 1 - C(n-c, k) / C(n, k).
    # math.comb(m, k) is 0 for k > m, which gives the n - c < k case for free.
    return float(1 - Fraction(math.comb(n - c, k), math.comb(n, k)))


# --- pass@k ---------------------------------------------------------------------------------------


def test_pass_at_k_matches_exact_combinatorics():
    for n in range(1, 21):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(exact_pass_at_k(n, c, k), abs=1e-12)
    # Large n, where the binomials themselves overflow a float.
    for n, c, k in [(200, 3, 100), (1000, 1, 1), (1000, 10, 500), (500, 0, 16), (64, 63, 16)]:
        assert pass_at_k(n, c, k) == pytest.approx(exact_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_curve_equals_brute_force_over_subsets():
    """pass@k as its meaning: the share of all k-subsets of the n samples holding a correct one,
    enumerated, averaged over problems."""
    rng = np.random.default_rng(0)
    problems = [rng.random(n) < rng.random() for n in (8, 9, 10, 10)]

    def brute(flags, k):
        subsets = list(itertools.combinations(range(len(flags)), k))
        return sum(any(flags[i] for i in s) for s in subsets) / len(subsets)

    curve = pass_at_k_curve([(len(f), int(f.sum())) for f in problems], 8)
    expected = [np.mean([brute(f, k) for f in problems]) for k in range(1, 9)]
    np.testing.assert_allclose(curve, expected, atol=1e-12)
    with pytest.raises(ValueError, match="K=9 needs 9 samples"):
        pass_at_k_curve([(8, 1)], 9)


def test_pass_at_k_edge_cases():
    assert pass_at_k(16, 0, 1) == 0.0
    assert pass_at_k(16, 0, 16) == 0.0
    assert pass_at_k(16, 16, 1) == 1.0
    assert pass_at_k(16, 1, 16) == 1.0  # n - c = 15 < k: every 16-subset holds the correct one
    assert pass_at_k(16, 4, 13) == 1.0  # n - c = 12 < 13
    assert pass_at_k(16, 4, 1) == pytest.approx(4 / 16)  # pass@1 is the plain accuracy
    for n, c, k in [(4, 1, 5), (4, 1, 0), (4, -1, 1), (4, 5, 1), (0, 0, 1)]:
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)


@pytest.mark.parametrize("n,c,k", [(16, 3, 4), (16, 1, 1), (10, 5, 2), (30, 2, 16), (16, 2, 8)])
def test_pass_at_k_matches_monte_carlo(n, c, k):
    # Draw k of the n samples without replacement (samples 0..c-1 are the correct ones) and count
    # how often at least one correct sample is drawn.
    trials = 20_000
    rng = np.random.default_rng(n * 1000 + c * 10 + k)
    drawn = rng.random((trials, n)).argsort(axis=1)[:, :k]  # [trials, k], a random k-subset each
    hit = (drawn < c).any(axis=1).mean()
    p = pass_at_k(n, c, k)
    stderr = math.sqrt(p * (1 - p) / trials)
    assert abs(hit - p) <= 3 * stderr + 1e-12


# --- mean@k, maj@k --------------------------------------------------------------------------------


def test_mean_at_k():
    assert mean_at_k([True, False, True, True]) == 0.75
    assert mean_at_k([0.5, 1.0, 0.0]) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        mean_at_k([])


def test_maj_at_k_hand_examples():
    # None (no answer) is the most frequent entry (3 of 6) but never the majority; "5" (2) beats "3".
    assert majority_answer(["3", "5", "5", None, None, None]) == "5"
    assert (
        maj_at_k(["3", "5", "5", None, None, None], [False, True, True, False, False, False]) == 1.0
    )
    # A 2-2 tie goes to the answer seen first.
    assert maj_at_k(["7", "5", "5", "7"], [False, True, True, False]) == 0.0
    assert maj_at_k(["5", "7", "7", "5"], [True, False, False, True]) == 1.0
    # A clear majority that is wrong.
    assert maj_at_k(["7", "7", "5"], [False, False, True]) == 0.0
    # All None: no majority answer, scores 0.
    assert majority_answer([None, None]) is None
    assert maj_at_k([None, None], [False, False]) == 0.0
    # Correctness is read off the samples: the first sample with the majority key decides.
    assert maj_at_k(["x", "y", "x"], [True, False, True]) == 1.0
    with pytest.raises(ValueError):
        maj_at_k(["a"], [True, False])


# --- diversity ------------------------------------------------------------------------------------


def test_distinct_n_hand_counted():
    responses = ["a b c", "a b d", "x"]
    # unigrams: a b c | a b d | x -> 7 in all, distinct {a, b, c, d, x} = 5
    assert distinct_n(responses, 1) == 5 / 7
    # bigrams: ab bc | ab bd | (none: "x" has one word) -> 4 in all, distinct {ab, bc, bd} = 3
    assert distinct_n(responses, 2) == 3 / 4
    # trigrams: abc | abd -> 2 in all, both distinct
    assert distinct_n(responses, 3) == 2 / 2
    # 4-grams: none -> 0 by definition
    assert distinct_n(responses, 4) == 0.0
    assert distinct_n([], 2) == 0.0
    # Repeats inside one response count too: "the cat the cat" -> (the cat)(cat the)(the cat):
    # 2 distinct of 3
    assert distinct_n(["the cat the cat"], 2) == 2 / 3
    # N-grams never span responses: "a" + "b" has no bigram "a b".
    assert distinct_n(["a", "b"], 2) == 0.0
    # Whitespace tokenisation: tabs and newlines split, case and punctuation are kept.
    assert distinct_n(["A a\ta\n a."], 1) == 3 / 4  # tokens A, a, a, a. -> distinct {A, a, a.}


A = "we add two and three to get five"
B = "we add two and four to get six"


def test_similarity_hand_computed():
    # Trigrams of A: (we add two)(add two and)(two and three)(and three to)(three to get)(to get five)
    # Trigrams of B: (we add two)(add two and)(two and four)(and four to)(four to get)(to get six)
    # shared 2, union 6 + 6 - 2 = 10
    assert similarity(A, B) == 2 / 10
    assert similarity(B, A) == 2 / 10
    # Unigrams: A {we add two and three to get five}, B {we add two and four to get six}
    # shared {we add two and to get} = 6, union 10
    assert similarity(A, B, n=1) == 6 / 10
    assert similarity(A, A) == 1.0
    # "5" has fewer than 3 words, so both sides fall back to unigrams: {x, =, 5} vs {5} -> 1/3
    assert similarity("x = 5", "5") == 1 / 3
    assert similarity("", "") == 1.0
    assert similarity("", "a b c") == 0.0


def test_mean_pairwise_similarity_hand_computed():
    # pairs: (A, B) = 0.2, (A, A) = 1.0, (B, A) = 0.2 -> 1.4 / 3
    assert mean_pairwise_similarity([A, B, A]) == pytest.approx(1.4 / 3)
    assert mean_pairwise_similarity([A, B]) == pytest.approx(0.2)
    assert math.isnan(mean_pairwise_similarity([A]))
    assert math.isnan(mean_pairwise_similarity([]))


def test_distinct_solution_paths_hand_computed():
    r1 = A
    # r2 differs from r1 in the last word only: 5 of its 6 trigrams are r1's; union 7 -> 5/7 >= 0.5
    r2 = "we add two and three to get 5"
    # r3 shares no trigram with r1 or r2 -> 0
    r3 = "five is three plus two by counting up"
    wrong = "the answer is seven"
    assert similarity(r1, r2) == 5 / 7
    # Correct: r1, r2, r3 -> clusters {r1, r2}, {r3}; the wrong response is not counted.
    assert distinct_solution_paths([r1, r2, r3, wrong], [True, True, True, False]) == 2
    # Counted as correct, the wrong one would be a third path (it shares nothing with the others).
    assert distinct_solution_paths([r1, r2, r3, wrong], [True] * 4) == 3
    # Raising the threshold above 5/7 splits r1 and r2.
    assert distinct_solution_paths([r1, r2, r3], [True] * 3, threshold=0.75) == 3
    assert distinct_solution_paths([r1, r2], [False, False]) == 0


def test_distinct_solution_paths_single_linkage_chains():
    a = "a b c d e"  # trigrams abc bcd cde
    b = "a b c d e f g"  # abc bcd cde def efg
    c = "c d e f g"  # cde def efg
    # J(a, b) = 3/5, J(b, c) = 3/5, J(a, c) = |{cde}| / |{abc bcd cde def efg}| = 1/5
    assert (similarity(a, b), similarity(b, c), similarity(a, c)) == (3 / 5, 3 / 5, 1 / 5)
    # At 0.5, a-b and b-c link, so a and c share a cluster through b though they are dissimilar.
    assert distinct_solution_paths([a, b, c], [True] * 3, threshold=0.5) == 1
    assert distinct_solution_paths([a, c], [True] * 2, threshold=0.5) == 2
    # Without b (wrong), the chain breaks.
    assert distinct_solution_paths([a, b, c], [True, False, True], threshold=0.5) == 2
    assert distinct_solution_paths([a, b, c], [True] * 3, threshold=0.7) == 3


def test_distinct_correct_answers():
    # correct answers: "5", "5", "five" -> {"5", "five"}; "7" is wrong, None is no answer
    assert distinct_correct_answers(["5", "5", "five", None, "7"], [1, 1, 1, 0, 0]) == 2
    # None never counts as an answer, even on a sample marked correct.
    assert distinct_correct_answers(["5", None], [True, True]) == 1
    assert distinct_correct_answers(["5", "6"], [False, False]) == 0


# --- per problem and aggregate --------------------------------------------------------------------


def test_problem_metrics_and_aggregate():
    responses = ["a b c", "a b d", "x y z", "a b c"]
    answers = ["5", "5", "6", "5"]
    correct = [True, False, False, True]
    m = problem_metrics(responses, answers, correct, ks=(1, 4, 16))
    assert m["samples"] == 4 and m["correct"] == 2
    assert m["mean@4"] == 0.5
    assert m["pass@1"] == 0.5
    assert m["pass@4"] == 1.0
    assert "pass@16" not in m  # 16 > 4 samples
    assert m["maj@4"] == 1.0  # "5" (3 votes); its first sample is correct
    # bigrams: ab bc | ab bd | xy yz | ab bc -> 8 in all, distinct {ab bc bd xy yz} = 5
    assert m["distinct_2"] == 5 / 8
    assert m["correct_answers"] == 1
    assert m["solution_paths"] == 1  # the two correct responses are identical
    # pairs (trigram sets are single trigrams): identical pair (1, 4) = 1, the other five = 0
    assert m["pairwise_similarity"] == pytest.approx(1 / 6)

    one = problem_metrics(["a b c"], ["5"], [False], ks=(1, 4))
    assert math.isnan(one["pairwise_similarity"])
    agg = aggregate([m, one])
    assert agg["problems"] == 2
    assert agg["pass@1"] == 0.25
    assert "pass@4" not in agg  # the one-sample problem has no pass@4
    assert "mean@4" not in agg and "mean@1" not in agg  # different sample counts do not mix
    assert agg["pairwise_similarity"] == pytest.approx(1 / 6)  # the NaN is skipped
    assert aggregate([m, m]) == pytest.approx(dict(m, problems=2.0))

    with pytest.raises(ValueError):
        problem_metrics(["a"], ["5", "6"], [True])


# --- report ---------------------------------------------------------------------------------------


def test_markdown_table():
    table = markdown_table(
        [{"name": "x", "v": 0.123456, "n": 3.0}, {"name": "y|z"}], ["name", "v", "n"]
    )
    assert table.splitlines() == [
        "| name | v | n |",
        "|---|---|---|",
        "| x | 0.1235 | 3 |",
        "| y\\|z | n/a | n/a |",
    ]


def test_write_report(tmp_path):
    per_math = [
        problem_metrics(["a b c", "a b d"], ["1", "2"], [True, False], ks=(1, 2)),
        problem_metrics(["p q r", "p q r"], ["3", "3"], [True, True], ks=(1, 2)),
    ]
    per_code = [problem_metrics(["x y z", "u v w"], [None, None], [False, True], ks=(1, 2))]
    results = {"math": aggregate(per_math), "code": aggregate(per_code)}
    prefix = str(tmp_path / "sub" / "eval")
    json_path, md_path = write_report(results, prefix)
    assert (json_path, md_path) == (prefix + ".json", prefix + ".md")

    with open(json_path) as f:
        assert json.load(f) == results
    lines = open(md_path).read().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == [
        "dataset",
        "mean@2",
        "pass@1",
        "pass@2",
        "maj@2",
        "distinct_2",
        "correct_answers",
        "solution_paths",
        "pairwise_similarity",
    ]
    assert lines[1].startswith("|---")
    assert len(lines) == 2 + 2  # header, separator, one row per dataset
    assert lines[2].startswith("| math | 0.75 | 0.75 | 1 |")
    assert lines[3].startswith("| code | 0.5 | 0.5 | 1 | 0 |")  # all-None answers: maj@2 = 0
    assert sorted(os.listdir(tmp_path / "sub")) == ["eval.json", "eval.md"]  # no temp files left


def test_write_report_nan_is_null_in_json(tmp_path):
    results = {"d": aggregate([problem_metrics(["a"], ["1"], [True], ks=(1,))])}
    json_path, md_path = write_report(results, str(tmp_path / "r"))
    with open(json_path) as f:
        assert json.load(f)["d"]["pairwise_similarity"] is None
    assert "n/a" in open(md_path).read()
