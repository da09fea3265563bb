"""What the trainer needs from a task: prompts and a reward per response."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    prompts: Sequence[str]  # the user message of each dataset row
    # (response text, dataset row) -> reward. Runs on the host, in a thread pool.
    reward: Callable[[str, int], float]
    solved: float = 1.0  # a reward >= this counts as a correct answer (the accuracy metric)


def get(name: str) -> Task:
    from flowrl_jax.tasks import digits

    tasks = {"digits": digits.task}
    if name not in tasks:
        raise ValueError(f"task.name={name!r} is not a known task; known: {sorted(tasks)}")
    return tasks[name]()
