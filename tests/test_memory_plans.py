"""Every phase of every shipped recipe, compiled for the hardware its config names (config.plan)
from abstract arrays, fits that hardware's memory with the stated margin (flowrl_jax/plan.py);
and a plan can fail: the 7B sampler with more slots than fit, the 7B update with too few
micro-batches. The 8-device recipes plan in this process (the suite's 8 CPU devices); the 32B
recipe's 32 devices need a process of its own (`python -m flowrl_jax.plan`, as a user runs it).

The plans are the CPU compiler's: see flowrl_jax/plan.py for how they differ from a GPU's."""

import os
import subprocess
import sys

import pytest

from flowrl_jax import plan as plan_lib
from flowrl_jax.config import from_file
from flowrl_jax.models.families import KNOWN_SHAPES

ROOT = os.path.join(os.path.dirname(__file__), "..")


def recipe(name: str, **overrides):
    config = from_file(os.path.join(ROOT, "configs", f"{name}.py"))
    for key, value in overrides.items():
        section, field = key.split("__")
        config[section][field] = value
    return config


def by_name(phases):
    return {p.program: p for p in phases}


# The code recipe's update is the 7B math recipe's: the same values of these keys (asserted), so
# CI plans that update once, with the math recipe.
SAME_UPDATE = {
    "r1_distill_qwen_7b_code": (
        "plan.model", "plan.devices", "model.dtype", "model.param_dtype", "model.remat",
        "mesh.data", "mesh.fsdp", "mesh.tensor", "algorithm.name", "rollout.max_new_tokens",
        "task.max_prompt_len", "train.minibatch_size", "train.micro_batches",
        "train.pack_length", "train.micro_batch_tokens",
    ),
}  # fmt: skip


def value(config, key):
    section, field = key.split(".")
    return config[section][field]


def planned(name):
    config = recipe(name)
    only = None
    if name in SAME_UPDATE:
        math = recipe("qwen2_5_7b_math")
        for key in SAME_UPDATE[name]:
            assert value(config, key) == value(math, key), key
        only = {"sampler", "logprobs", "advantages"}
    return config, by_name(plan_lib.plan(config, only))


@pytest.mark.parametrize("name", ["qwen2_5_7b_math", "r1_distill_qwen_7b_code", "hf_checkpoint"])
def test_every_phase_of_an_eight_device_recipe_fits(name):
    config, phases = planned(name)
    print(plan_lib.table(list(phases.values()), config))
    assert "sampler" in phases
    assert all(p.fits for p in phases.values()), plan_lib.table(list(phases.values()), config)
    sampler = phases["sampler"]
    assert sampler.slots.isdigit()  # the slot sampler, sized by the recipe's KV-cache budget
    if "update" not in phases:
        return  # the 7B math recipe's update, planned there
    update = phases["update"]
    # The state really is split 8 ways and donated: fp32 weights and Adam's two moments, 12 bytes
    # a parameter over 8 devices, are aliased (the update's output reuses them), and its
    # arguments are that share plus the mini-batch, nothing replicated.
    share = 12 * KNOWN_SHAPES[config.plan.model]["params"] / 8 / 1e9
    assert share <= update.aliased_gb < share + 0.2, (share, update)
    assert update.aliased_gb <= update.arguments_gb < update.aliased_gb + 0.5
    if name == "qwen2_5_7b_math":
        # The whole rollout batch, 512 prompts x 8 samples = 4,096 rows of 2048 + 8192 tokens,
        # in 80 GB (the static batch planned 1,060 GB per device).
        assert config.train.prompts_per_step * config.rollout.n == 4096
        assert sampler.gb <= 80 - 6 and int(sampler.slots) < 4096, sampler


def test_a_sampler_with_more_slots_than_fit_is_planned_not_to_fit():
    """The negative control: the 7B recipe with a KV-cache budget of 24 GB (320 slots)."""
    [over] = plan_lib.plan(recipe("qwen2_5_7b_math", rollout__kv_cache_gb=24.0), only={"sampler"})
    assert not over.fits and int(over.slots) == 320, over


@pytest.mark.slow  # CI's negative control is the sampler's, above
def test_too_large_micro_batches_do_not_fit():
    """8 packed rows of 10240 tokens per device at once need more than an H100."""
    config = recipe("qwen2_5_7b_math", train__micro_batch_tokens=64 * 10240)
    [update] = plan_lib.plan(config, only={"update"})
    assert not update.fits, update


def test_the_32b_recipe_fits_32_devices():
    """A process of its own with 32 CPU devices, started as a user starts it."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("XLA_FLAGS", None)  # the plan sets its own device count
    out = subprocess.run(
        [sys.executable, "-m", "flowrl_jax.plan", "--config=configs/qwen2_5_32b_math.py"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    print(out.stdout)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert "32 x 80 GB" in out.stdout and "all fit" in out.stdout
    assert "| sampler |" in out.stdout and "| update |" in out.stdout


def test_the_7b_lora_recipe_fits_one_device(tmp_path):
    """configs/qwen2_5_7b_math_lora.py on ONE 80 GB device (its own process, as a user runs the
    plan): every phase fits; the update holds the bf16 base (15.2 GB) and the rank-64 adapters
    with their Adam moments, donated, and nothing model-sized beside it."""
    import json

    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("XLA_FLAGS", None)  # the plan sets its own device count
    out_json = str(tmp_path / "plan.json")
    argv = [
        "-m",
        "flowrl_jax.plan",
        "--config=configs/qwen2_5_7b_math_lora.py",
        f"--out={out_json}",
    ]
    out = subprocess.run(
        [sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500
    )
    print(out.stdout)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert "1 x 80 GB" in out.stdout and "all fit" in out.stdout
    with open(out_json) as f:
        phases = {p["program"]: p for p in json.load(f)["phases"]}
    update = phases["update"]
    base = 2 * KNOWN_SHAPES["qwen2.5-7b"]["params"] / 1e9  # bf16
    assert update["fits"] and update["resident_gb"] == 0.0
    assert base < update["aliased_gb"] < base + 3.0, update  # + adapters, moments, heads
    assert update["arguments_gb"] < update["aliased_gb"] + 1.0


DEFAULT_LEVEL = {"xla_backend_optimization_level": 3}  # XLA's default (the suite runs at 0)


def test_the_plans_compile_options_leave_the_buffers_as_they_are():
    """plan.PLAN_ONLY drops LLVM's optimisations only: the tiny model's slot sampler on the
    suite's 8 devices (fsdp 4 x tensor 2) plans the same bytes of every kind with it as at XLA's
    default level. (The update takes 30 s more to compile twice; the recipes' plans of it moved
    by less than 0.1 GB when the option came in.)"""
    import jax

    from flowrl_jax import lower
    from flowrl_jax import mesh as mesh_lib
    from flowrl_jax.config import base_config

    config = base_config()
    config.mesh.fsdp, config.mesh.tensor = 4, 2
    config.rollout.slots, config.task.max_prompt_len, config.train.prompts_per_step = 8, 32, 8
    config.train.pack_length, config.train.micro_batch_tokens = 64, 64 * 4
    mesh = mesh_lib.make_mesh(dict(config.mesh))
    cfg, _ = lower.model_and_tokenizer(config)
    with jax.set_mesh(mesh):
        programs = {p.name: p for p in lower.programs(config, cfg, mesh, "cpu", None)}
        for name in ("sampler",):
            lowered = programs[name].fn.lower(*programs[name].args)
            a = lowered.compile(compiler_options=DEFAULT_LEVEL).memory_analysis()
            b = lowered.compile(compiler_options=plan_lib.PLAN_ONLY).memory_analysis()
            for kind in ("argument", "output", "temp", "alias"):
                field = f"{kind}_size_in_bytes"
                assert getattr(a, field) == getattr(b, field), (name, field)
            assert a.temp_size_in_bytes > 0
