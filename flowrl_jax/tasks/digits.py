"""The synthetic task of the embedded default job: any prompt, and the reward is the fraction of the
response's non-space characters that are digits. A random tiny model learns it in a few steps, which
makes the end-to-end job check something without a download."""

from __future__ import annotations

from flowrl_jax.tasks.base import Task


def digit_fraction(response: str, row: int) -> float:
    del row
    chars = [c for c in response if not c.isspace()]
    return sum(c.isdigit() for c in chars) / len(chars) if chars else 0.0


def task() -> Task:
    questions = [f"What is {a} + {b}?" for a in range(10) for b in range(10)]
    return Task("digits", questions, digit_fraction)
