"""The embedded default config of `python -m flowrl_jax.train`, composed from component defaults.

Each component owns its defaults (`mesh.default_config`, `models.from_config.default_config`); this
file only composes them. The config is locked after loading: an override of a key that does not
exist (`--config.modle.dtype=...`) is an error, not a new key.
"""

from ml_collections import ConfigDict

from flowrl_jax import mesh
from flowrl_jax.models import from_config


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
    config.smoke = ConfigDict(
        {"new_tokens": 24}
    )  # greedy tokens decoded by the foundation smoke run
    return config
