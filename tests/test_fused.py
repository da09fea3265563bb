"""The fused RL step (one compiled program) against the phased loop: the same parameters and metrics
after 3 steps with the same seed, for FlowRL and GRPO with the default job's compiled reward; one
program for 5 steps of one prompt bucket."""

import jax
import numpy as np
import pytest

from flowrl_jax import mesh as mesh_lib
from flowrl_jax.config import base_config
from flowrl_jax.models import from_config
from flowrl_jax.tasks import Task, digits
from flowrl_jax.trainer import loop
from flowrl_jax.trainer.data import PromptOrder
from flowrl_jax.trainer.loop import Trainer

# Host-side figures that exist only in one form, or are timings.
SKIP = ("time/", "perf/", "rollout/tokens_per_s", "train/tokens_per_s")


def host_digits():
    """The default task with only its text reward: scored on the host (a callback when fused)."""
    task = digits.task()
    return Task(task.name, task.prompts, task.reward)


def make_trainer(tmp_path, algorithm, mesh, task=None, slots=0, changes=None):
    """changes: {"train.pack_length": 48, ...} on top of the test's config."""
    config = base_config()
    config.rollout.slots = slots  # 0: the static batch
    config.workdir = str(tmp_path)
    config.algorithm.name = algorithm
    config.train.prompts_per_step = 2
    config.train.minibatch_size = 4  # 2 optimiser steps per rollout batch: pi_old != pi_theta
    config.train.epochs = 2
    for key, value in (changes or {}).items():
        section, name = key.split(".")
        config[section][name] = value
    model, tokenizer = from_config.build(config.model, mesh, config.seed)
    return Trainer(config, model, tokenizer, mesh, task or digits.task()), tokenizer


def prompt_source(tokenizer, task, k):
    order = PromptOrder(len(task.prompts), seed=0)

    def next_prompts():
        rows = order.take(k)
        texts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": task.prompts[r]}],
                add_generation_prompt=True,
                tokenize=False,
            )
            for r in rows
        ]
        return [tokenizer(t)["input_ids"] for t in texts], rows

    return next_prompts


def phased_and_fused(tmp_path, algorithm, mesh, task=None, slots=(0, 0), changes=(None, None)):
    """Three RL steps each way, the same seed -> {form: (metrics per step, parameters)} for
    "phased" and "fused"; slots: each form's rollout.slots (0: the static batch); changes: each
    form's config changes (make_trainer)."""
    runs = {}
    with jax.set_mesh(mesh):
        for form, count, change in zip(("phased", "fused"), slots, changes):
            trainer, tokenizer = make_trainer(tmp_path / form, algorithm, mesh, task, count, change)
            assert trainer.sampler.slots.slots == count
            draw = prompt_source(tokenizer, trainer.task, 2)
            step = trainer.fused_step if form == "fused" else trainer.step
            history = [step(draw) for _ in range(3)]
            runs[form] = (history, jax.tree.map(np.asarray, trainer.state.params))
    return runs["phased"], runs["fused"]


@pytest.mark.parametrize(
    "algorithm, reward",
    [  # All -m slow for CI's time: CI runs the compiled reward's fused == phased as
        # tests/test_slots.py's fused-with-slots-and-packing test, and a host reward inside the
        # fused program in test_host_reward_failure_stops_the_fused_step_and_keeps_the_checkpoint.
        pytest.param("flowrl", "compiled", marks=pytest.mark.slow),
        pytest.param("grpo", "host", marks=pytest.mark.slow),
        pytest.param("flowrl", "host", marks=pytest.mark.slow),
        pytest.param("grpo", "compiled", marks=pytest.mark.slow),
    ],
)
def test_fused_equals_phased(tmp_path, algorithm, reward):
    mesh = mesh_lib.make_mesh({}, jax.devices()[:1])
    task = host_digits() if reward == "host" else None
    (phased, p_params), (fused, f_params) = phased_and_fused(tmp_path, algorithm, mesh, task)
    for a, b in zip(phased, fused):
        keys = {k for k in a if not k.startswith(SKIP)}
        assert keys <= set(b), keys - set(b)
        for k in sorted(keys):
            np.testing.assert_allclose(b[k], a[k], rtol=1e-6, atol=1e-6, err_msg=k)
    assert phased[0]["reward/mean"] != phased[1]["reward/mean"]  # rewards vary: a real check
    for (path, x), y in zip(
        jax.tree_util.tree_leaves_with_path(p_params), jax.tree.leaves(f_params)
    ):
        np.testing.assert_allclose(y, x, rtol=1e-6, atol=1e-6, err_msg=str(path))


def test_one_program_for_five_steps(tmp_path):
    mesh = mesh_lib.make_mesh({}, jax.devices()[:1])
    with jax.set_mesh(mesh):
        trainer, tokenizer = make_trainer(tmp_path, "flowrl", mesh)
        draw = prompt_source(tokenizer, trainer.task, 2)
        for _ in range(5):
            metrics = trainer.fused_step(draw)
    assert np.isfinite(metrics["loss"])
    [program] = trainer._fused.values()
    assert program._cache_size() == 1


@pytest.mark.slow  # minutes; CI runs test_fused_equals_phased and the sharded phased loop
def test_fused_on_eight_devices_equals_one(tmp_path):
    def run(mesh, workdir):
        config = base_config()
        config.workdir = str(workdir)
        config.train.prompts_per_step = 4  # fills the batch bucket of data x fsdp = 4
        config.train.minibatch_size = 8
        with jax.set_mesh(mesh):
            model, tokenizer = from_config.build(config.model, mesh, config.seed)
            trainer = Trainer(config, model, tokenizer, mesh, digits.task())
            draw = prompt_source(tokenizer, trainer.task, 4)
            history = [trainer.fused_step(draw) for _ in range(2)]
            params = jax.tree.map(mesh_lib.to_host, trainer.state.params)
        return history, params

    one, one_params = run(mesh_lib.make_mesh({}, jax.devices()[:1]), tmp_path / "one")
    eight, eight_params = run(mesh_lib.make_mesh({"fsdp": 4, "tensor": 2}), tmp_path / "eight")
    for a, b in zip(one, eight):
        for k in sorted(k for k in a if not k.startswith(SKIP)):
            np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-5, err_msg=k)
    for (path, x), y in zip(
        jax.tree_util.tree_leaves_with_path(one_params), jax.tree.leaves(eight_params)
    ):
        np.testing.assert_allclose(y, x, rtol=0, atol=1e-5, err_msg=str(path))


def test_selection(tmp_path):
    """auto fuses the default job and a host-reward task; DAPO's dynamic sampling runs phased;
    insisting on fused where it cannot run is an error before anything compiles."""
    mesh = mesh_lib.make_mesh({}, jax.devices()[:1])
    with jax.set_mesh(mesh):
        config = base_config()
        config.workdir = str(tmp_path)
        model, tokenizer = from_config.build(config.model, mesh, config.seed)
        assert Trainer(config, model, tokenizer, mesh, digits.task()).fused
        host_only = Task("host", ["a", "b"], lambda response, row: 0.0)
        assert Trainer(config, model, tokenizer, mesh, host_only).fused  # through a callback
        config.train.fused = "true"
        config.train.prompts_per_step = 3  # the batch bucket is 4
        with pytest.raises(ValueError, match="does not fill the sampler's batch bucket"):
            Trainer(config, model, tokenizer, mesh, host_only)
        config.train.prompts_per_step = 2
        config.train.fused = "maybe"
        with pytest.raises(ValueError, match="train.fused='maybe' is not allowed: expected one of"):
            Trainer(config, model, tokenizer, mesh, digits.task())
        config.train.fused = "auto"
        config.algorithm.name = "dapo"
        assert not Trainer(config, model, tokenizer, mesh, digits.task()).fused


@pytest.mark.parametrize("failure", [pytest.param("raises", marks=pytest.mark.slow), "hangs"])
def test_host_reward_failure_stops_the_fused_step_and_keeps_the_checkpoint(tmp_path, failure):
    import time

    from flowrl_jax.trainer.checkpoint import Checkpoints
    from flowrl_jax.trainer.restore import load_run_policy
    from flowrl_jax.trainer.run import run

    calls = []

    def flaky_reward(response, row):
        calls.append(row)
        if len(calls) > 8:  # the first RL step (2 prompts x 4 samples) goes through
            if failure == "hangs":
                time.sleep(8)  # past the 2 s timeout; the thread then ends
            raise ValueError("no answer here")
        return 0.5

    config = base_config()
    config.workdir = str(tmp_path)
    config.train.steps, config.checkpoint.every = 3, 1
    config.train.fused, config.train.reward_timeout = "true", 2.0
    mesh = mesh_lib.make_mesh({}, jax.devices()[:1])
    task = Task("flaky", digits.task().prompts, flaky_reward)
    t0 = time.monotonic()
    with jax.set_mesh(mesh), pytest.raises(Exception) as error:
        model, tokenizer = from_config.build(config.model, mesh, config.seed)
        run(config, mesh, model, tokenizer, task)
    message = str(error.value)
    assert "flaky_reward" in message and "task 'flaky'" in message
    assert (
        "within train.reward_timeout=2.0 s" if failure == "hangs" else "no answer here"
    ) in message
    assert time.monotonic() - t0 < 60
    checkpoints = Checkpoints(str(tmp_path), config.checkpoint)
    assert checkpoints.steps() == [1]
    checkpoints.close()
    _, _, record = load_run_policy(str(tmp_path), mesh=mesh)  # read whole, fingerprint checked
    assert record["rl_step"] == 1


@pytest.mark.slow  # a timing test: a busy machine makes it slow, not wrong
def test_fused_phase_times_time_a_known_phase(tmp_path):
    """The fused step's per-phase times come from timestamps the program sends as each phase ends.
    A host reward that sleeps a known 0.4 s (8 responses x 0.05 s on one worker) must show up as the
    reward phase, not in its neighbours; the phases add up to the step; off, there are none."""
    import time

    def slow_reward(response, row):
        time.sleep(0.05)
        return float(len(response) % 3)

    mesh = mesh_lib.make_mesh({}, jax.devices()[:1])
    with jax.set_mesh(mesh):
        task = Task("slow", digits.task().prompts, slow_reward)
        config = base_config()
        config.workdir = str(tmp_path)
        config.train.reward_workers = 1
        model, tokenizer = from_config.build(config.model, mesh, config.seed)
        trainer = Trainer(config, model, tokenizer, mesh, task)
        draw = prompt_source(tokenizer, task, 2)
        for _ in range(2):  # the first step compiles
            metrics = trainer.fused_step(draw)
        phases = [metrics[f"time/{p}"] for p in ("rollout", "reward", "logprobs", "update")]
        assert 0.4 <= metrics["time/reward"] < 0.4 + 0.5, metrics["time/reward"]
        assert all(t > 0 for t in phases) and sum(phases) <= metrics["time/step"]
        assert metrics["time/rollout"] < metrics["time/step"] - 0.4  # the sleep is not there
        config.train.fused_phase_times = "false"
        quiet = Trainer(config, model, tokenizer, mesh, task)
        assert "time/rollout" not in quiet.fused_step(draw)


def test_on_an_accelerator_auto_keeps_host_calls_out_of_the_program():
    """On a TPU or GPU "auto" runs a host reward in the phased loop and the fused step without
    phase marks (a program that calls the host is not cached, nor lowered ahead); on the CPU both
    stay in the program; "true" insists everywhere."""
    config = base_config()
    fills = lambda k: k  # every batch fills its bucket
    assert loop.choose_fused(config, True, fills, "tpu") == (True, None)
    fused, why = loop.choose_fused(config, False, fills, "tpu")
    assert not fused and "reward runs on the host" in why
    assert loop.choose_fused(config, False, fills, "cpu") == (True, None)
    config.train.fused = "true"
    assert loop.choose_fused(config, False, fills, "gpu") == (True, None)
    config.train.fused = "false"
    assert loop.choose_fused(config, True, fills, "cpu") == (False, None)
    assert loop.phase_times(config, "cpu") and not loop.phase_times(config, "tpu")
    config.train.fused_phase_times = "TRUE"
    assert loop.phase_times(config, "gpu")
    config.train.fused_phase_times = "false"
    assert not loop.phase_times(config, "cpu")
