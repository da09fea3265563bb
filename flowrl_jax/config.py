"""The embedded default config of `python -m flowrl_jax.train`, composed from component defaults.

Each component owns its defaults (`mesh.default_config`, `models.from_config.default_config`); this
file only composes them. The config is locked after loading: an override of a key that does not
exist (`--config.modle.dtype=...`) is an error, not a new key.
"""

from ml_collections import ConfigDict

from flowrl_jax import mesh
from flowrl_jax.models import from_config
from flowrl_jax.rollout import sampler


def get_config() -> ConfigDict:
    config = ConfigDict()
    config.seed = 0
    config.workdir = "runs/default"
    config.mesh = mesh.default_config()
    config.model = from_config.default_config()
    # Multi-host: on TPU pods jax.distributed.initialize() needs no arguments; on GPU clusters give the
    # coordinator (host:port), the process count and this process's id (launch/ scripts fill them).
    config.distributed = ConfigDict(
        {"enabled": False, "coordinator_address": "", "num_processes": 0, "process_id": -1}
    )
    config.rollout = sampler.default_config()
    # The smoke run (until the trainer lands): greedy and sampled tokens per response.
    config.smoke = ConfigDict({"new_tokens": 24})
    return config
