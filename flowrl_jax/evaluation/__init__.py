"""Evaluation: accuracy (mean@k, pass@k, maj@k) and judge-free diversity over k samples a problem.

Per problem: `problem_metrics(responses, answers, correct)`; over a dataset: `aggregate`; to disk:
`write_report({dataset: aggregate(...)}, "out/eval")` writes out/eval.json and out/eval.md.
"""

from flowrl_jax.evaluation.metrics import (
    aggregate,
    distinct_correct_answers,
    distinct_n,
    distinct_solution_paths,
    maj_at_k,
    majority_answer,
    mean_at_k,
    mean_pairwise_similarity,
    ngrams,
    pass_at_k,
    pass_at_k_curve,
    problem_metrics,
    similarity,
)
from flowrl_jax.evaluation.report import markdown_table, write_report

__all__ = [
    "aggregate",
    "distinct_correct_answers",
    "distinct_n",
    "distinct_solution_paths",
    "maj_at_k",
    "majority_answer",
    "markdown_table",
    "mean_at_k",
    "mean_pairwise_similarity",
    "ngrams",
    "pass_at_k",
    "pass_at_k_curve",
    "problem_metrics",
    "similarity",
    "write_report",
]
