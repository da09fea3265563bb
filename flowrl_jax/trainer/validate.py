"""The allowed values of every config section, each declared by its component beside its defaults
(`RULES`; flowrl_jax/rules.py), gathered here and checked in one pass: the first thing `run.check`
does, before a task is built, a weight read, a demonstration written or a program compiled."""

from __future__ import annotations

from ml_collections import ConfigDict

from flowrl_jax import algorithms, hardware, mesh, tasks
from flowrl_jax import rules as R
from flowrl_jax.algorithms import heads
from flowrl_jax.evaluation import sampled
from flowrl_jax.models import from_config, lora
from flowrl_jax.rollout import sampler
from flowrl_jax.trainer import checkpoint, loop, sft, step


def rules() -> dict:
    """The whole config's rules, nested as the config is (flowrl_jax/config.py composes it)."""
    algorithm = {"name": R.OneOf(tuple(algorithms.names()))}
    for name in algorithms.names():
        algorithm[name] = algorithms.get(name).rules
    return {
        "mesh": mesh.RULES,
        "model": from_config.RULES,
        # config.py's own sections (they have no component of their own).
        "distributed": {"num_processes": R.COUNT, "process_id": R.Range(-1, integer=True)},
        "smoke": {"new_tokens": R.POSITIVE_INT},
        "rollout": sampler.RULES,
        "algorithm": algorithm,
        "heads": heads.RULES,
        "optimizer": step.RULES,
        "train": loop.RULES,
        "checkpoint": checkpoint.RULES,
        "lora": lora.RULES,
        "task": tasks.RULES,
        "sft": sft.RULES,
        "eval": sampled.RULES,
        "plan": hardware.RULES,
    }


def check(config: ConfigDict) -> None:
    """ValueError naming the first key whose value its rule refuses: the key, the value and what
    is allowed."""
    R.check(config, rules(), "")
