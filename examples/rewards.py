"""Example reward functions for `--config.task.reward` (flowrl_jax/tasks/user_rewards.py). Each is
called as function(prompt, response, row): the prompt text, the response text and the data row
with all its fields, and returns a number.

    python -m flowrl_jax.train --config.task.reward=task,examples/rewards.py:brevity \
        --config.task.reward_weights=1,0.1
"""


def exact_answer(prompt: str, response: str, row: dict) -> float:
    """1 when the response, stripped, is the row's `answer` field or one of its `answers` (the
    built-in countdown task's correct answers, in their canonical form), else 0."""
    gold = [row["answer"]] if "answer" in row else list(row.get("answers", ()))
    return float(response.strip() in {str(g).strip() for g in gold})


def brevity(prompt: str, response: str, row: dict) -> float:
    """Minus the response's length in hundreds of characters: with a small weight, a nudge toward
    short answers."""
    return -len(response) / 100.0
