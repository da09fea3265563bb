"""Planning past this machine: the update step of the shipped Qwen2.5-7B config
(configs/qwen2_5_7b_math.py), lowered and compiled for 8 devices (fsdp=8) with its real batch
shapes, from abstract arrays only (jax.ShapeDtypeStruct with shardings: nothing 7B-sized is
allocated). XLA's per-device memory plan must fit an 80 GB H100.

The shapes: a mini-batch of 256 sequences (32 prompts x 8 samples, paper), responses of 8192
tokens (paper) after a 2048-token prompt bucket: the authors' verl script for Qwen2.5-7B
(recipe/flowrl/run_flowrl_qwen2.5_7b.sh) allows prompts of up to 2048 tokens, so the plan takes
the largest prompt bucket it could meet. Parameters are stored in float32 (master weights: the
config's param_dtype) and computed in bfloat16 (its dtype), layers rematerialised (its remat).

Compiling takes ~6 s on 2 CPU cores (the layers and micro-batches are scanned), so it runs in CI.
The plan is the CPU compiler's: a GPU build schedules differently and needs a few GB of its own
(cuBLAS workspaces, NCCL buffers), hence the margin the chosen micro-batch count leaves.
"""

import functools
import importlib.util
import os

import jax
import jax.numpy as jnp
import pytest

from flowrl_jax import algorithms
from flowrl_jax import mesh as mesh_lib
from flowrl_jax.models import known_config, param_shapes
from flowrl_jax.trainer import step as step_lib

H100_BYTES = 80e9  # 80 GB (decimal; the card's 80 GiB leaves ~6 GB more)
PROMPT = 2048  # the prompt bucket (see the module docstring)
# 256 rows / 16 = 16 rows per micro-batch, 2 per device: 40 GB. 32 (1 per device) plans 32 GB,
# 8 (4 per device) 60 GB, 4 (8 per device) 99 GB.
MICRO_BATCHES = 16


def shipped_config():
    path = os.path.join(os.path.dirname(__file__), "..", "configs", "qwen2_5_7b_math.py")
    spec = importlib.util.spec_from_file_location("qwen2_5_7b_math", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def plan(algorithm: str, micro_batches: int):
    """Compile the update of the 7B config for `algorithm` -> (compiled, the train state's bytes
    per device when every array is split 8 ways)."""
    config = shipped_config()
    m = config.model
    cfg = known_config(
        "qwen2.5-7b",
        dtype=m.dtype,
        param_dtype=m.param_dtype or m.dtype,
        remat=m.remat,
        attention_block=m.attention_block,
    )
    assert (cfg.dtype, cfg.param_dtype, cfg.remat) == ("bfloat16", "float32", "full")
    spec = step_lib.StepSpec(
        cfg,
        algorithm,
        config.algorithm[algorithm],
        config.heads,
        PROMPT,
        config.rollout.temperature,
        micro_batches=micro_batches,
    )
    optimizer = step_lib.make_optimizer(config.optimizer, config.heads)
    mesh = mesh_lib.make_mesh({"fsdp": 8})
    abstract = jax.eval_shape(
        lambda params, key: step_lib.init_state(spec, params, optimizer, key),
        param_shapes(cfg),
        jax.random.key(0),
    )
    sharding = step_lib.state_shardings(mesh, abstract, cfg.family)
    state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, sharding
    )

    B, N = config.train.minibatch_size, config.rollout.max_new_tokens
    assert (B, N) == (256, 8192)
    step_lib.check_micro_batches(B, micro_batches, mesh)
    rows = mesh_lib.batch_sharding(mesh, ndim=1)

    def array(shape, dtype):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=rows)

    alg = algorithms.get(algorithm)
    tokens = array((B, PROMPT + N), jnp.int32)  # tokens and mask [B, P + N]
    batch = algorithms.Batch(
        logp=None,
        old_logp=array((B, N), jnp.float32),
        mask=array((B, N), jnp.float32),
        rewards=array((B,), jnp.float32),
        group=array((B,), jnp.int32),
        ref_logp=array((B, N), jnp.float32) if alg.needs_ref(config.algorithm[algorithm]) else None,
        old_values=array((B, N), jnp.float32) if alg.needs_values else None,
    )
    batch = jax.eval_shape(functools.partial(step_lib.prepare, spec), batch)  # + advantages etc.
    batch = jax.tree.map(lambda x: array(x.shape, x.dtype), batch)
    update = step_lib.jit_update(spec, optimizer, mesh, sharding)
    with jax.set_mesh(mesh):
        compiled = update.lower(state, tokens, tokens, batch).compile()
    state_bytes = sum(
        x.size * x.dtype.itemsize // 8 for x in jax.tree.leaves(abstract) if x.ndim
    )  # every array of the state split 8 ways (the scalars are negligible)
    return compiled, state_bytes


def per_device_bytes(compiled) -> tuple[float, str]:
    stats = compiled.memory_analysis()
    total = (
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        + stats.temp_size_in_bytes
        - stats.alias_size_in_bytes  # the donated state: its output reuses the argument's buffers
    )
    text = (
        f"arguments {stats.argument_size_in_bytes / 1e9:.2f} GB + outputs "
        f"{stats.output_size_in_bytes / 1e9:.2f} GB - aliased {stats.alias_size_in_bytes / 1e9:.2f}"
        f" GB + temporaries {stats.temp_size_in_bytes / 1e9:.2f} GB = {total / 1e9:.2f} GB"
    )
    return total, text


@pytest.mark.parametrize("algorithm", ["flowrl", "ppo"])
def test_the_7b_train_step_fits_an_h100_per_device(algorithm):
    """FlowRL (the paper's run) and PPO (the largest batch: values, returns, advantages [B, N],
    the value head)."""
    micro = shipped_config().train.get("micro_batches", MICRO_BATCHES)
    compiled, state_bytes = plan(algorithm, micro)
    total, text = per_device_bytes(compiled)
    print(f"qwen2.5-7b {algorithm} update, fsdp=8, {micro} micro-batches: {text}")
    stats = compiled.memory_analysis()
    # The state really is split 8 ways (fp32 weights, Adam's two moments): the arguments are the
    # state's share plus the batch, nothing replicated.
    assert state_bytes <= stats.argument_size_in_bytes < state_bytes + 0.2e9
    assert stats.alias_size_in_bytes >= state_bytes  # the whole state is donated
    assert total < H100_BYTES, text


def test_the_plan_can_fail_too_few_micro_batches_do_not_fit():
    """8 sequences of 10240 tokens per device at once need more than an H100."""
    compiled, _ = plan("flowrl", 4)
    total, text = per_device_bytes(compiled)
    assert total > H100_BYTES, text
