"""Evaluation metrics over k sampled responses per problem: accuracy and judge-free diversity.

The FlowRL paper reports math as mean@16 and code as pass@1 / pass@16, and scores diversity with
a paid LLM judge. The judge is replaced here by things anyone can recompute from the responses:
distinct-n, the number of distinct correct answers, the number of distinct correct solution paths
(clusters of similar correct responses) and the mean pairwise similarity.

Conventions used throughout:
- `correct[i]` is whether sample i is correct, as a bool. Rewards with partial credit must be
  thresholded by the caller (e.g. `reward >= task.solved`) before they come here.
- `answers[i]` is sample i's final answer as a normalised key (equal keys = the same answer), or
  None when no answer could be extracted.
- Text is tokenised by `str.split()` (runs of whitespace), no lower-casing or punctuation
  stripping: cheap, tokenizer-independent and reproducible, at the cost of treating "x." and "x"
  as different words.

No JAX here: these run on the host after sampling, and must be testable without an accelerator.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021, HumanEval).

    1 - C(n-c, k) / C(n, k): the chance that k samples drawn without replacement from the n
    include at least one correct one. Computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i), which avoids
    the huge binomials; exactly 1.0 when n - c < k (every k-subset holds a correct sample).
    """
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n; got k={k}, n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n; got c={c}, n={n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def pass_at_k_curve(counts: Sequence[tuple[int, int]], K: int) -> list[float]:
    """The pass@k curve k = 1..K averaged over problems, from each problem's (n samples, c correct),
    by the unbiased estimator; every problem needs n >= K."""
    short = [n for n, _ in counts if n < K]
    if short:
        raise ValueError(
            f"a pass@k curve to K={K} needs {K} samples per problem; one has {short[0]}"
        )
    return [float(np.mean([pass_at_k(n, c, k) for n, c in counts])) for k in range(1, K + 1)]


def mean_at_k(correct: Sequence[bool | float]) -> float:
    """mean@k: the mean correctness (or reward) over the k samples of one problem."""
    if len(correct) == 0:
        raise ValueError("mean@k of zero samples is undefined")
    return float(np.mean(np.asarray(correct, dtype=np.float64)))


def majority_answer(answers: Sequence[str | None]) -> str | None:
    """The most frequent non-None answer; ties go to the answer that occurs first.

    None (no answer) never wins unless every answer is None, in which case the result is None.
    First occurrence as the tie-break keeps the result deterministic without depending on how
    answers sort.
    """
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    # Counter keeps insertion (= first occurrence) order, and max returns the first maximum.
    return max(counts, key=counts.__getitem__)


def maj_at_k(answers: Sequence[str | None], correct: Sequence[bool]) -> float:
    """maj@k: 1.0 if the majority answer (see `majority_answer`) is correct, else 0.0.

    Correctness comes from the samples rather than a gold answer, so any equivalence checker
    (sympy, a unit-test runner) works: the majority answer is as correct as the first sample that
    gave it. Samples with equal keys should agree; if the keys are coarser than the checker they
    may not, and then the first one decides. All-None answers score 0.0.
    """
    if len(answers) != len(correct):
        raise ValueError(f"{len(answers)} answers but {len(correct)} correctness flags")
    top = majority_answer(answers)
    if top is None:
        return 0.0
    return float(bool(correct[list(answers).index(top)]))


def ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    """Word n-grams of one text (whitespace tokens), in order, with repeats; none across texts."""
    words = text.split()
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def distinct_n(responses: Sequence[str], n: int) -> float:
    """Distinct word n-grams over all responses / total n-grams (Li et al. 2016); 0.0 if none.

    N-grams are taken inside each response, never spanning two. Note distinct-n falls as the
    number of responses grows even at fixed diversity, so compare it only at equal k.
    """
    grams = [g for r in responses for g in ngrams(r, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def distinct_correct_answers(answers: Sequence[str | None], correct: Sequence[bool]) -> int:
    """How many distinct final answers (normalised keys) the correct samples gave.

    Mostly 0 or 1 on single-answer math; larger on problems with several valid answers.
    """
    if len(answers) != len(correct):
        raise ValueError(f"{len(answers)} answers but {len(correct)} correctness flags")
    return len({a for a, ok in zip(answers, correct) if ok and a is not None})


def similarity(a: str, b: str, n: int = 3) -> float:
    """Jaccard similarity of the two texts' sets of word n-grams, in [0, 1].

    n=3 by default: unigram overlap is high between any two solutions to one problem (they share
    its vocabulary), while shared trigrams mean shared phrasing. If either text has fewer than n
    words, both fall back to unigrams, so short answers are still comparable. Two texts with no
    words at all are identical (1.0); one empty and one not, 0.0.
    """
    if min(len(a.split()), len(b.split())) < n:
        n = 1
    sa, sb = set(ngrams(a, n)), set(ngrams(b, n))
    if not sa and not sb:
        return 1.0
    return len(sa & sb) / len(sa | sb)


def mean_pairwise_similarity(responses: Sequence[str], n: int = 3) -> float:
    """Mean `similarity` over all unordered pairs; NaN for fewer than 2 responses.

    NaN rather than 0.0 or 1.0 because with one response there is no pair, and either number
    would read as a real (extreme) diversity; `aggregate` skips NaNs. O(k^2) pairs: fine at k=16.
    """
    sims = [
        similarity(responses[i], responses[j], n)
        for i in range(len(responses))
        for j in range(i + 1, len(responses))
    ]
    return float(np.mean(sims)) if sims else math.nan


def distinct_solution_paths(
    responses: Sequence[str], correct: Sequence[bool], threshold: float = 0.5, n: int = 3
) -> int:
    """The number of clusters among the CORRECT responses; 0 if none is correct.

    Two responses are linked when `similarity(a, b, n) >= threshold`; clusters are the connected
    components of that graph (single linkage). Single linkage chains: A~B and B~C put A and C
    together even if they share little, so this counts paths conservatively.
    """
    if len(responses) != len(correct):
        raise ValueError(f"{len(responses)} responses but {len(correct)} correctness flags")
    good = [r for r, ok in zip(responses, correct) if ok]
    parent = list(range(len(good)))  # union-find over the correct responses

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(good)):
        for j in range(i + 1, len(good)):
            if similarity(good[i], good[j], n) >= threshold:
                parent[root(i)] = root(j)
    return len({root(i) for i in range(len(good))})


def problem_metrics(
    responses: Sequence[str],
    answers: Sequence[str | None],
    correct: Sequence[bool],
    ks: Sequence[int] = (1, 4, 16),
    answer_set: Sequence[str] | None = None,
) -> dict[str, float]:
    """All metrics for one problem's k samples, keyed as they appear in reports.

    mean@ and maj@ are named after the number of samples; pass@k is included only for k <= it.
    answer_set: the problem's complete set of correct answers (keys as in `answers`), where the task
    enumerates it: `coverage` is then the fraction of it that the samples found.
    """
    k = len(responses)
    if not k or len(answers) != k or len(correct) != k:
        raise ValueError(
            f"need equal, non-zero counts: {k} responses, {len(answers)} answers, "
            f"{len(correct)} correctness flags"
        )
    ok = [bool(x) for x in correct]
    out = {"samples": float(k), "correct": float(sum(ok)), f"mean@{k}": mean_at_k(ok)}
    for j in sorted(ks):
        if j <= k:
            out[f"pass@{j}"] = pass_at_k(k, sum(ok), j)
    out[f"maj@{k}"] = maj_at_k(answers, ok)
    out["distinct_1"] = distinct_n(responses, 1)
    out["distinct_2"] = distinct_n(responses, 2)
    out["correct_answers"] = float(distinct_correct_answers(answers, ok))
    out["solution_paths"] = float(distinct_solution_paths(responses, ok))
    out["pairwise_similarity"] = mean_pairwise_similarity(responses)
    if answer_set is not None:
        out["coverage"] = coverage(answers, ok, answer_set)
    return out


def coverage(answers: Sequence[str | None], correct: Sequence[bool], answer_set) -> float:
    """The fraction of a problem's correct answers `answer_set` that the correct samples found."""
    full = set(answer_set)
    if not full:
        raise ValueError("coverage needs a non-empty set of correct answers")
    found = {a for a, c in zip(answers, correct) if c and a is not None}
    return len(found & full) / len(full)


def aggregate(per_problem: Sequence[dict[str, float]]) -> dict[str, float]:
    """Means over problems of every metric that EVERY problem has, plus `problems` (the count).

    A key some problem lacks is dropped, so pass@16 is never averaged over problems that had fewer
    than 16 samples (nor mean@16 mixed with mean@8). NaNs (pairwise similarity of one sample) are
    skipped; a metric that is NaN for every problem stays NaN.
    """
    if not per_problem:
        return {"problems": 0.0}
    keys = [key for key in per_problem[0] if all(key in p for p in per_problem)]
    out = {"problems": float(len(per_problem))}
    for key in keys:
        vals = np.asarray([p[key] for p in per_problem], dtype=np.float64)
        vals = vals[~np.isnan(vals)]
        out[key] = float(vals.mean()) if vals.size else math.nan
    return out
