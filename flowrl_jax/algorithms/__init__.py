"""Losses registered by name: flowrl, grpo, ppo, reinforce_pp, dapo, gspo (`registry.get`)."""

from ml_collections import ConfigDict

from flowrl_jax.algorithms import dapo, flowrl, grpo, gspo, ppo, reinforce_pp  # noqa: F401 (register)
from flowrl_jax.algorithms.registry import Algorithm, Batch, GroupFilter, get, names, register


def default_config() -> ConfigDict:
    """config.algorithm: `name` picks the algorithm; each has its own knobs under its name."""
    config = ConfigDict({"name": "flowrl"})
    for name in names():
        config[name] = get(name).default_config()
    return config


__all__ = ["Algorithm", "Batch", "GroupFilter", "default_config", "get", "names", "register"]
