"""Tasks: a dataset of prompts and a reward the host computes for each response."""

from flowrl_jax.tasks.base import Task, get

__all__ = ["Task", "get"]
