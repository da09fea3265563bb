"""Rewards from the user's own code. `task.reward` names functions, comma-separated, each as
`package.module:function` (importable) or `path/to/file.py:function` (a file of its own); `task`
names the task's own reward, so it can be kept beside the user's. `task.reward_weights` gives
their weights (comma-separated; default 1 each); the reward of a response is the weighted sum.

Each function is called as `function(prompt, response, row)`: the prompt text (the dataset row's
user message, before the chat template), the response text, and the data row as a dict of all
its fields (a file task's row as the file has it, plus the canonical `prompt` / `answer` /
`tests` where task.fields renames them; a built-in task's own row). It returns a
number. The functions run where the task's reward runs: in the reward thread pool under
`train.reward_timeout` in training (each one's mean logged as `reward/<name>`), and in evaluation,
where a response is correct when its reward reaches the task's `solved` threshold. A function that
raises or returns something other than a finite number stops the step with an error naming it and
the data row. Every function is imported when the task is built (`run.check`), so a missing module
or function is one line before anything else runs.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import math
import numbers
import os
import sys
from collections.abc import Callable

TASK = "task"  # the name of the task's own reward in task.reward


@dataclasses.dataclass(frozen=True)
class NamedReward:
    name: str  # as logged: reward/<name>
    score: Callable  # (response text, dataset row index) -> number, the function bound to the task
    weight: float


def parse(spec: str, weights: str) -> list[tuple[str, float]]:
    """task.reward, task.reward_weights -> [(function spec, weight)]; malformed ones are errors."""
    specs = [s.strip() for s in spec.split(",") if s.strip()]
    if not weights.strip():
        values = [1.0] * len(specs)
    else:
        try:
            values = [float(w) for w in weights.split(",")]
        except ValueError:
            raise ValueError(
                f"task.reward_weights={weights!r}: expected comma-separated numbers"
            ) from None
        if len(values) != len(specs):
            raise ValueError(
                f"task.reward_weights={weights!r} gives {len(values)} weights for the "
                f"{len(specs)} functions of task.reward={spec!r}"
            )
    for s in specs:
        if s != TASK and (":" not in s or not all(s.rsplit(":", 1))):
            raise ValueError(
                f"task.reward: {s!r} is not MODULE:FUNCTION or FILE.py:FUNCTION (or 'task')"
            )
    return list(zip(specs, values))


def resolve(spec: str) -> Callable:
    """The function `spec` names, imported now; a missing module, file or name is a ValueError."""
    where, name = spec.rsplit(":", 1)
    if where.endswith(".py"):
        path = os.path.abspath(where)
        if not os.path.isfile(path):
            raise ValueError(f"task.reward: {spec!r}: no such file {where!r}")
        module_name = f"flowrl_jax_user_reward_{abs(hash(path))}"
        module = sys.modules.get(module_name)
        if module is None:
            loader = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(loader)
            loader.loader.exec_module(module)
            sys.modules[module_name] = module  # reward threads and pickling find it again
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise ValueError(f"task.reward: {spec!r}: module {where!r} does not import: {e}") from e
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ValueError(f"task.reward: {spec!r}: {where!r} has no function {name!r}")
    return fn


def attach(task, spec: str, weights: str):
    """`task` scored by the functions of task.reward: its `named_rewards` and, as its `reward`,
    their weighted sum."""
    named = []
    for s, weight in parse(spec, weights):
        if s == TASK:
            named.append(NamedReward(TASK, task.reward, weight))
            continue
        fn = resolve(s)

        def score(response, i, fn=fn):
            return fn(task.prompts[i], response, row_fields(task, i))

        named.append(NamedReward(s.rsplit(":", 1)[1], score, weight))
    names = [r.name for r in named]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"task.reward: {repeated} named twice (each is logged as reward/<name>)")
    named = tuple(named)

    def total(response: str, i: int) -> float:
        return sum(r.weight * value(r, task, response, i) for r in named)

    return dataclasses.replace(task, reward=total, named_rewards=named, make_jit_reward=None)


def row_fields(task, i: int) -> dict:
    """Dataset row i with all its fields (a copy: a reward function cannot change the task): a
    file row as its file has it, plus the canonical names (prompt, answer, tests) that
    task.fields maps to other names; a built-in task's own row."""
    row = task.rows[i] if i < len(task.rows) else {}
    if "record" not in row:
        return dict(row)
    canonical = {k: row[k] for k in ("prompt", "answer", "tests") if k in row}
    return canonical | dict(row["record"])


def where(task, i: int) -> str:
    row = task.rows[i] if i < len(task.rows) else {}
    return f"dataset row {i}" + (f" ({row['source']})" if "source" in row else "")


def value(reward: NamedReward, task, response: str, i: int) -> float:
    """One function's reward of one response to `task`'s row i, checked: an exception or a value
    that is not a finite number is a RuntimeError naming the function and the data row."""
    try:
        got = reward.score(response, i)
    except Exception as e:
        raise RuntimeError(
            f"the reward function {reward.name!r} failed on {where(task, i)}: "
            f"{type(e).__name__}: {e}"
        ) from e
    if not isinstance(got, numbers.Real) or not math.isfinite(got):
        raise RuntimeError(
            f"the reward function {reward.name!r} returned {got!r} on {where(task, i)}: a reward "
            "must be a finite number"
        )
    return float(got)
