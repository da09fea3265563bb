"""The embedded default config of `python -m flowrl_jax.train`, composed from component defaults.

Each component owns its defaults (`mesh.default_config`, `models.from_config.default_config`); this
file only composes them. The config is locked after loading: an override of a key that does not
exist (`--config.modle.dtype=...`) is an error, not a new key.
"""

from ml_collections import ConfigDict

from flowrl_jax import algorithms, evaluate, mesh, tasks
from flowrl_jax.algorithms import heads
from flowrl_jax.models import from_config
from flowrl_jax.rollout import sampler
from flowrl_jax.trainer import checkpoint, loop, step


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
    config.algorithm = algorithms.default_config()  # --config.algorithm.name=grpo switches it
    config.heads = heads.default_config()
    config.optimizer = step.optimizer_config()
    config.train = loop.default_config()
    config.checkpoint = checkpoint.default_config()
    # digits (synthetic, the default) | file (--config.task.path=data.jsonl, task.kind math|code) |
    # gym:<reasoning-gym dataset> (task.gym_size, task.gym_config); tasks/base.py documents each key.
    config.task = tasks.default_config()
    config.eval = evaluate.default_config()  # periodic evaluation; off by default
    # The embedded default is a tiny random model on the CPU: short responses, small groups, and a
    # learning rate a random tiny model notices (the paper's 1e-6 is for 7B checkpoints).
    config.rollout.n = 4
    config.rollout.max_new_tokens = 16
    config.optimizer.learning_rate = 1e-4
    # The smoke run: greedy and sampled tokens per response.
    config.smoke = ConfigDict({"enabled": True, "new_tokens": 24})
    return config
