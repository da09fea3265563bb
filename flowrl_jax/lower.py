"""Check, on any machine, that a run's programs lower for a TPU or a GPU before the pod is paid for.

    python -m flowrl_jax.lower --config=configs/qwen2_5_7b_math.py --model=qwen2.5-7b \
        --devices=256 --platforms=tpu,cuda

Every program the trainer compiles for the run (the sampler's prefill and decode, the chunked
log-probs, the advantages, the update, the fused RL step where the trainer would fuse on that
platform, SFT's step where the warm-up is on) is built as the trainer builds it, at the run's real
shapes, over an abstract mesh of --devices devices (the config's mesh resolved for that many), and
exported with `jax.export` for each platform, with the attention kernels a run there uses
(`model.attention` and `model.decode_attention` resolved for it; the table names each program's
custom calls). Nothing is read or allocated: the parameters are shapes (`--model`, a known shape,
or the config's checkpoint's config.json or tiny model).

A program that does not lower is named with the error; a host callback inside one (it lowers for
the local backend only) is named with its source line. Prints a table; exit 1 when any program
failed. tests/test_lower.py runs this for tpu and cuda in CI.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import sys
import time

import jax
import jax.numpy as jnp
from absl import app, flags
from jax import export as jax_export
from jax.extend import source_info_util
from jax.sharding import AbstractMesh, AxisType
from ml_collections import ConfigDict

from flowrl_jax import algorithms, cli
from flowrl_jax import mesh as mesh_lib
from flowrl_jax.models import kernels, known_config, lora, param_shapes, partition
from flowrl_jax.models.from_config import model_config, overrides
from flowrl_jax.rollout import sampler as sampler_lib
from flowrl_jax.tasks.prompts import prompt_limit
from flowrl_jax.trainer import demonstrations, fused, loop, sft
from flowrl_jax.trainer import rewards as rewards_lib
from flowrl_jax.trainer import step as step_lib

log = logging.getLogger("flowrl_jax")

# The platforms jax.export lowers for, and the device platform the trainer sees there.
PLATFORMS = {"tpu": "tpu", "cuda": "gpu", "rocm": "gpu", "cpu": "cpu"}
CALLBACKS = ("pure_callback", "io_callback", "debug_callback")
# The GPU kernels' custom calls have no serialisation guarantee; lowering is all we check.
CHECKS = [jax_export.DisabledSafetyCheck.custom_call(t) for t in kernels.GPU_TARGETS]


@dataclasses.dataclass
class Program:
    name: str
    fn: object  # a jitted function
    args: tuple  # ShapeDtypeStructs (with shardings over the abstract mesh) and pytrees of them


@dataclasses.dataclass
class Lowered:
    program: str
    platform: str
    ok: bool
    seconds: float
    error: str = ""
    ops: int = 0  # lines of the StableHLO module: a rough size
    kernels: tuple = ()  # the custom calls in it (the attention kernels: cuDNN's, Mosaic TPU's)


def abstract_mesh(config: ConfigDict, devices: int) -> AbstractMesh:
    """config.mesh resolved for `devices` devices, without any device."""
    sizes = mesh_lib.mesh_shape(dict(config.mesh), devices)
    return AbstractMesh(sizes, mesh_lib.AXES, axis_types=(AxisType.Auto,) * len(sizes))


def model_and_tokenizer(config: ConfigDict, model: str = ""):
    """-> (the run's DecoderConfig, its tokenizer or None): a known shape (`model`, with the
    config's dtype, remat, ...; no tokenizer) or the config's own model (its checkpoint's
    config.json and tokenizer, or the tiny model)."""
    if model:
        return known_config(model, **overrides(config.model)), None
    return model_config(config.model)


def compiled_reward(config: ConfigDict, tokenizer):
    """The run's compiled reward (the task's make_jit_reward), or None: the host scores it. A task
    that cannot be built here (a data file on another machine) is scored on the host: only
    built-in tasks have compiled rewards."""
    from flowrl_jax import tasks

    try:
        task = tasks.get(config.task, config.seed)
    except (FileNotFoundError, tasks.DataError, ValueError) as e:
        log.info("task not built here (%s): its reward is taken to run on the host", e)
        return None
    if task.make_jit_reward is None or config.task.get("reward"):
        return None
    if tokenizer is None:
        raise ValueError(
            f"task {config.task.name!r} compiles its reward from the tokenizer: "
            "lower the config's own model (no --model)"
        )
    return task.make_jit_reward(tokenizer)


def programs(config: ConfigDict, cfg, mesh, platform: str, reward=None) -> list[Program]:
    """The programs a run of `config` compiles on `platform` ("tpu", "gpu", "cpu"), built by the
    trainer's own builders, with abstract arguments at the run's largest shapes. reward: the
    task's compiled reward, or None (a host reward)."""
    t, r = config.train, config.rollout
    rows = mesh_lib.batch_sharding(mesh, ndim=1)

    def batch_array(shape, dtype):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=rows)

    # The rollout: the prompts fill the sampler's batch bucket; the bucket of the run's longest
    # prompt (task.max_prompt_len, or the largest bucket).
    B = sampler_lib.batch_bucket(t.prompts_per_step, mesh)
    P, N = sampler_lib.bucket_of(prompt_limit(config), r.prompt_buckets), r.max_new_tokens
    sp = sampler_lib.SamplingParams(
        max_new_tokens=N,
        n=r.n,
        temperature=r.temperature,
        top_p=r.top_p,
        top_k=r.top_k,
        stop_tokens=(cfg.vocab_size - 1,),  # token values are not part of the program's shape
        pad_id=0,
    )
    shapes = param_shapes(cfg)
    adapted = lora.enabled(config.get("lora"))
    if adapted:  # the policy with its adapters; the reference is its base (no weights of its own)
        cfg = lora.model_config(cfg, config.lora)
        shapes = lora.with_adapters(shapes, lora.adapter_shapes(config.lora, shapes))
    policy = step_lib.placed(
        shapes, partition.shardings(partition.rules_for(cfg.family), shapes, mesh)
    )
    prompts = jax.ShapeDtypeStruct((B, P), jnp.int32, sharding=mesh_lib.batch_sharding(mesh))
    live = batch_array((B,), jnp.bool_)
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=mesh_lib.replicated(mesh))
    plan = sampler_lib.plan_on(sampler_lib.slot_settings(r), cfg, P + N, mesh)
    out = [
        Program(
            "sampler",
            sampler_lib.jit_sample,
            (cfg, sp, r.cache_segments, plan, policy, prompts, prompts, live, key),
        )
    ]

    # The RL step's phases, as the Trainer builds them.
    name = config.algorithm.name
    minibatch = loop.minibatch_size(config)
    spec = loop.step_spec(config, cfg, P, mesh)
    optimizer = step_lib.make_optimizer(
        config.optimizer, config.heads, total_steps=loop.optimizer_steps(config)
    )
    abstract = jax.eval_shape(lambda p, k: step_lib.init_state(spec, p, optimizer, k), shapes, key)
    sharding = step_lib.state_shardings(mesh, abstract, cfg.family)
    state = step_lib.placed(abstract, sharding)
    alg = algorithms.get(name)
    ref = ({} if adapted else policy) if alg.needs_ref(config.algorithm[name]) else None
    R = B * r.n
    tokens = batch_array((R, P + N), jnp.int32)
    if ref is not None or alg.needs_values:
        block = minibatch // t.micro_batches
        out.append(
            Program(
                "logprobs", step_lib.jit_score(spec, block), (state.params, ref, tokens, tokens)
            )
        )
    batch = algorithms.Batch(
        logp=None,
        old_logp=batch_array((R, N), jnp.float32),
        mask=batch_array((R, N), jnp.float32),
        rewards=batch_array((R,), jnp.float32),
        group=batch_array((R,), jnp.int32),
        ref_logp=None if ref is None else batch_array((R, N), jnp.float32),
        old_values=batch_array((R, N), jnp.float32) if alg.needs_values else None,
    )
    out.append(Program("advantages", step_lib.jit_prepare(spec), (batch,)))
    prepared = jax.eval_shape(step_lib.jit_prepare(spec), batch)
    prepared = jax.tree.map(lambda x: batch_array(x.shape, x.dtype), prepared)
    update = step_lib.jit_updates(spec, optimizer, minibatch, t.epochs, mesh, sharding)
    out.append(Program("update", update, (state, tokens, tokens, prepared)))

    bucket = lambda k: sampler_lib.batch_bucket(k, mesh)
    fuse, why = loop.choose_fused(config, reward is not None, bucket, platform)
    if fuse:
        fspec = fused.FusedSpec(
            spec,
            sp,
            r.cache_segments,
            plan,
            minibatch,
            t.epochs,
            reward or rewards_lib.host_callback(_not_called, r.n),
            fused.PhaseClock().mark if loop.phase_times(config, platform) else None,
        )
        ref_sharding = None if ref is None else jax.tree.map(lambda x: x.sharding, ref)
        step = fused.jit_rl_step(fspec, optimizer, mesh, sharding, ref_sharding)
        answers = batch_array((B,), jnp.int32)
        out.append(Program("fused_rl_step", step, (state, ref, prompts, prompts, answers)))
    else:
        log.info("no fused RL step on %s: %s", platform, why or "train.fused=false")

    if sft.enabled(config.sft):
        s = config.sft
        sft_optimizer = step_lib.make_optimizer(s.optimizer, None, total_steps=1000)
        sft_policy, sft_cfg = policy, cfg
        if adapted and not lora.in_sft(config.lora):  # a full warm-up before LoRA RL
            sft_policy, sft_cfg = lora.base(policy), cfg.replace(lora_scale=0.0, lora_dropout=0.0)
        sft_state, sft_sharding = sft.abstract_state(sft_optimizer, sft_policy, mesh, cfg.family)
        length = demonstrations.max_len(config)
        sft_tokens = batch_array((s.batch_size, length), jnp.int32)
        step = sft.jit_update(sft_cfg, sft_optimizer, s.micro_batches, mesh, sft_sharding)
        out.append(Program("sft_update", step, (sft_state, sft_tokens, sft_tokens, sft_tokens)))
    return out


def _not_called(*_):
    raise AssertionError("a lowered program is never run")


def callbacks(program: Program) -> list[str]:
    """The host callbacks inside a program: 'primitive at file:line' each."""
    found = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name in CALLBACKS:
                found.append(
                    f"{eqn.primitive.name} at {source_info_util.summarize(eqn.source_info)}"
                )
            for param in eqn.params.values():
                for sub in param if isinstance(param, list | tuple) else [param]:
                    inner = getattr(sub, "jaxpr", sub)
                    if hasattr(inner, "eqns"):
                        walk(inner)

    walk(program.fn.trace(*program.args).jaxpr.jaxpr)
    return found


def lower(program: Program, platform: str, mesh: AbstractMesh) -> Lowered:
    """Export `program` for `platform` -> whether it lowered, and the error naming what did not."""
    t0 = time.perf_counter()
    try:
        with jax.sharding.use_abstract_mesh(mesh), kernels.cudnn_lowerable():
            exported = jax_export.export(program.fn, platforms=[platform], disabled_checks=CHECKS)(
                *program.args
            )
        text = exported.mlir_module()
        calls = tuple(sorted(set(re.findall(r"custom_call @([\w$.]+)", text))))
        seconds = time.perf_counter() - t0
        return Lowered(program.name, platform, True, seconds, ops=text.count("\n"), kernels=calls)
    except Exception as e:  # noqa: BLE001 -- the report names whatever stopped the lowering
        with jax.sharding.use_abstract_mesh(mesh), kernels.cudnn_lowerable():
            found = callbacks(program)
        error = " ".join(str(e).split())[:400]
        if found:
            error = "host callback(s) inside the program: " + "; ".join(found) + f" ({error})"
        return Lowered(program.name, platform, False, time.perf_counter() - t0, error=error)


def check(config: ConfigDict, platforms: list[str], devices: int, model: str = "") -> list[Lowered]:
    """Lower every program of the run for each platform -> one row per (program, platform)."""
    unknown = sorted(set(platforms) - set(PLATFORMS))
    if unknown:
        raise ValueError(f"platforms {unknown} unknown; known: {sorted(PLATFORMS)}")
    from flowrl_jax.trainer import validate

    validate.check(config)
    mesh = abstract_mesh(config, devices)
    loop.check_sizes(config, mesh)
    cfg, tokenizer = model_and_tokenizer(config, model)
    reward = compiled_reward(config, tokenizer)
    results = []
    for platform in platforms:
        # The attention kernels a run on that platform uses ('auto' resolved there, not here).
        device = PLATFORMS[platform]
        kind = kernels.resolve(cfg.attention, cfg.dtype, device)
        decode = kernels.resolve_decode(cfg.decode_attention, device)
        for choice in (kind, decode):
            kernels.check(choice, device)
        there = cfg.replace(attention=kind, decode_attention=decode)
        with jax.sharding.use_abstract_mesh(mesh), kernels.cudnn_lowerable():
            built = programs(config, there, mesh, device, reward)
        for program in built:
            results.append(lower(program, platform, mesh))
            log.info("%s", results[-1])
    return results


def table(results: list[Lowered]) -> str:
    lines = [
        "| program | platform | lowered | seconds | StableHLO lines | kernels |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        status = "yes" if r.ok else f"NO: {r.error}"
        calls = ", ".join(r.kernels) or "-"
        lines.append(
            f"| {r.program} | {r.platform} | {status} | {r.seconds:.1f} | {r.ops} | {calls} |"
        )
    return "\n".join(lines)


_MODEL = flags.DEFINE_string(
    "model", "", "a known model shape (e.g. qwen2.5-7b) instead of the config's"
)
_DEVICES = flags.DEFINE_integer(
    "devices", 8, "devices of the target slice (the mesh resolves for them)"
)
_PLATFORMS = flags.DEFINE_string("platforms", "tpu,cuda", "comma-separated: tpu, cuda, rocm, cpu")
_JSON = flags.DEFINE_string("json", "", "also write the rows to this JSON file")


def main(argv) -> None:
    del argv
    cli.setup_logging()
    try:
        config = _CONFIG.value
        platforms = [p.strip() for p in _PLATFORMS.value.split(",") if p.strip()]
        results = check(config, platforms, _DEVICES.value, _MODEL.value)
    except (*cli.USER_ERRORS, KeyError) as e:
        cli.fail(cli.message(e))
    print(table(results))
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump([dataclasses.asdict(r) for r in results], f, indent=1)
    failed = [f"{r.program}/{r.platform}" for r in results if not r.ok]
    print(
        f"lowered {len(results) - len(failed)} of {len(results)}"
        + (f"; failed: {failed}" if failed else "")
    )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    _CONFIG = cli.define_config_flag(sys.argv)
    app.run(main, flags_parser=cli.parse_flags)
