"""One config key switches the algorithm: a training step of the tiny model for each of the six,
through the main job's own `train`, with no other change; and sizes that cannot work are refused
before anything compiles."""

import time

import jax
import numpy as np
import pytest

from flowrl_jax import algorithms
from flowrl_jax import mesh as mesh_lib
from flowrl_jax.config import get_config
from flowrl_jax.train import train
from flowrl_jax.trainer import check_sizes

# What each algorithm must log beside the shared diagnostics.
OWN_METRICS = {
    "flowrl": ["flowrl/logz", "flowrl/logz_optimal", "flowrl/delta_mean", "kl_ref/k3"],
    "grpo": ["ratio/mean", "clip_fraction", "advantage/std"],
    "ppo": ["ppo/value_loss", "ppo/value_clip_fraction", "clip_fraction"],
    "reinforce_pp": ["kl_ref/k3", "clip_fraction", "advantage/std"],
    "dapo": ["clip_fraction", "advantage/std"],
    "gspo": ["gspo/seq_ratio_mean", "gspo/seq_clip_fraction"],
}


def _config(tmp_path, name):
    config = get_config()
    config.workdir = str(tmp_path)
    config.algorithm.name = name
    config.train.steps = 1
    config.rollout.max_new_tokens = 8
    return config


def test_every_algorithm_is_registered():
    assert set(algorithms.names()) == set(OWN_METRICS)


@pytest.mark.parametrize("name", sorted(OWN_METRICS))
def test_switching_the_algorithm_runs_a_training_step(tmp_path, name):
    config = _config(tmp_path, name)
    mesh = mesh_lib.make_mesh(dict(config.mesh))
    with jax.set_mesh(mesh):
        [metrics] = train(config, mesh)
    assert np.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0, metrics
    for key in OWN_METRICS[name] + ["reward/mean", "entropy", "loss"]:
        assert key in metrics, (key, sorted(metrics))


def test_unknown_algorithm_lists_the_known_ones(tmp_path):
    config = _config(tmp_path, "grpoo")
    mesh = mesh_lib.make_mesh(dict(config.mesh))
    with pytest.raises(ValueError) as err:
        check_sizes(config, mesh)
    for name in algorithms.names():
        assert name in str(err.value)


def test_group_that_does_not_divide_the_minibatch_is_refused_before_compiling(tmp_path):
    config = _config(tmp_path, "grpo")
    config.rollout.n = 4
    config.train.minibatch_size = 6  # one and a half groups
    mesh = mesh_lib.make_mesh(dict(config.mesh))
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"minibatch_size=6 is not a multiple of .*rollout.n=4"):
        with jax.set_mesh(mesh):
            train(config, mesh)
    assert time.perf_counter() - t0 < 1.0  # refused before the model is built or compiled


def test_minibatch_that_does_not_divide_the_rollout_batch_is_refused(tmp_path):
    config = _config(tmp_path, "flowrl")
    config.train.prompts_per_step = 3
    config.rollout.n = 4
    config.train.minibatch_size = 8
    mesh = mesh_lib.make_mesh(dict(config.mesh))
    with pytest.raises(ValueError, match=r"does not divide the rollout batch"):
        check_sizes(config, mesh)
