"""Memory plans: what each phase of a run needs per device on the hardware its config names, known
before that hardware is paid for.

    python -m flowrl_jax.plan --config=configs/qwen2_5_7b_math.py

Every program the trainer would run for the config on `plan.platform` (`lower.programs`: the
sampler, the reference log-probs, the advantages, the update, the fused step where the trainer
would fuse there, SFT's step) is compiled by XLA's CPU compiler over `plan.devices` devices with
the run's real shapes (the prompt bucket of the run's prompt limit, the rollout batch, the response
limit, the slot plan), from abstract arrays: nothing model-sized is allocated. A process has as
many CPU devices as the plan names (it restarts itself with the XLA flag that makes them).

A phase's figure is its program's peak (arguments + outputs + temporaries - the donated buffers
its outputs reuse) plus what stays in device memory while it runs without being one of its
arguments: the rest of the train state (Adam's moments while sampling) and the reference weights.
It must fit `plan.device_memory_gb` less `plan.margin_gb` (a GPU's own workspaces, collective
buffers, fragmentation). The CPU compiler computes bf16 matmuls in float32 and holds float32
copies of their bf16 operands, which a TPU or GPU does not (about 30 GB per device of the 7B's
sampling weights): its plans are higher than an accelerator's there.

Prints a table (phase, GB per device, limit, slots, micro-batches); exit 1 when a phase does not
fit. tests/test_memory_plans.py runs it on every shipped recipe in CI.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
import time

from absl import app
from ml_collections import ConfigDict

from flowrl_jax import cli

log = logging.getLogger("flowrl_jax")

# The arguments of each program that are resident anyway (the train state, the reference
# weights): counted once, in the resident total.
RESIDENT_ARGS = {
    "sampler": (4,),  # the policy's weights
    "logprobs": (0, 1),  # the parameters, the reference weights
    "advantages": (),
    "update": (0,),  # the state
    "fused_rl_step": (0, 1),  # the state, the reference weights
}


# The programs are compiled for their memory plan and never run: LLVM's optimisations of the CPU
# code can go (a quarter of the compile time; the buffers and their sizes are those of the
# default level, tests/test_memory_plans.py).
PLAN_ONLY = {"xla_backend_optimization_level": 0}


@dataclasses.dataclass
class Phase:
    program: str
    gb: float  # per device: the program's peak plus the resident state it does not take
    program_gb: float  # the program's own peak
    resident_gb: float  # resident and not among its arguments
    limit_gb: float  # device memory less the margin
    slots: str  # the sampler's slot count, "static" (the static batch) or "-"
    micro_batches: int | str
    seconds: float
    arguments_gb: float = 0.0  # the program's arguments, per device
    aliased_gb: float = 0.0  # of them, donated: its outputs reuse them

    @property
    def fits(self) -> bool:
        return self.gb <= self.limit_gb


def per_device(tree) -> int:
    """Bytes one device holds of a pytree of sharded ShapeDtypeStructs (None leaves: 0)."""
    import jax

    total = 0
    for x in jax.tree.leaves(tree):
        shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
        total += math.prod(shape) * x.dtype.itemsize
    return total


def program_peak(stats) -> int:
    """A compiled program's memory_analysis() -> its peak bytes per device."""
    return (
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        + stats.temp_size_in_bytes
        - stats.alias_size_in_bytes
    )


def plan(config: ConfigDict, only=None) -> list[Phase]:
    """Compile every program of the run (or those named in `only`) on this process's devices ->
    one Phase each."""
    import jax

    from flowrl_jax import lower
    from flowrl_jax import mesh as mesh_lib
    from flowrl_jax.trainer import loop, validate

    p = config.plan
    if not p.devices or not p.device_memory_gb:
        raise ValueError("config.plan.devices and config.plan.device_memory_gb name no hardware")
    if jax.device_count() != p.devices:
        raise ValueError(
            f"config.plan.devices={p.devices} but this process has {jax.device_count()} devices "
            f"(run it with XLA_FLAGS=--xla_force_host_platform_device_count={p.devices})"
        )
    validate.check(config)
    mesh = mesh_lib.make_mesh(dict(config.mesh))
    loop.check_sizes(config, mesh)
    cfg, tokenizer = lower.model_and_tokenizer(config, p.model)
    # Compiled by the CPU's compiler, planned for a GPU or TPU: the slot sampler's decode
    # attention as it runs there (the whole window; the CPU's reads the filled part).
    cfg = cfg.replace(decode_block=0)
    reward = lower.compiled_reward(config, tokenizer)
    with jax.set_mesh(mesh):
        programs = {x.name: x for x in lower.programs(config, cfg, mesh, p.platform, reward)}
        state = programs["update"].args[0]
        ref = programs["logprobs"].args[1] if "logprobs" in programs else None
        resident = per_device(state) + per_device(ref)
        sampler_plan = programs["sampler"].args[3]
        slots = "static" if sampler_plan is None else str(sampler_plan.slots)
        pack_len, pack_rows = loop.packing_of(config, mesh)
        micro = f"{pack_rows} rows of {pack_len}" if pack_len else str(config.train.micro_batches)
        limit = p.device_memory_gb - p.margin_gb
        phases = []
        for name, program in programs.items():
            if only is not None and name not in only:
                continue
            t0 = time.perf_counter()
            lowered = program.fn.lower(*program.args)
            stats = lowered.compile(compiler_options=PLAN_ONLY).memory_analysis()
            peak = program_peak(stats)
            if name in RESIDENT_ARGS:
                taken = sum(per_device(program.args[i]) for i in RESIDENT_ARGS[name])
                extra = resident - taken
            else:  # SFT's step runs before RL: its state is all it holds
                extra = 0
            phases.append(
                Phase(
                    name,
                    (peak + extra) / 1e9,
                    peak / 1e9,
                    extra / 1e9,
                    limit,
                    slots if name in ("sampler", "fused_rl_step") else "-",
                    micro if name in ("logprobs", "update", "fused_rl_step") else "-",
                    time.perf_counter() - t0,
                    stats.argument_size_in_bytes / 1e9,
                    stats.alias_size_in_bytes / 1e9,
                )
            )
            log.info("%s", phases[-1])
    return phases


def table(phases: list[Phase], config: ConfigDict) -> str:
    p = config.plan
    lines = [
        f"{p.devices} x {p.device_memory_gb:g} GB ({p.platform}), margin {p.margin_gb:g} GB",
        "",
        "| phase | GB per device | of which resident | limit GB | fits | slots | micro-batches (or packed rows each) |",
        "|---|---|---|---|---|---|---|",
    ]
    for x in phases:
        lines.append(
            f"| {x.program} | {x.gb:.1f} | {x.resident_gb:.1f} | {x.limit_gb:g} | "
            f"{'yes' if x.fits else 'NO'} | {x.slots} | {x.micro_batches} |"
        )
    return "\n".join(lines)


def ensure_devices(devices: int) -> None:
    """Restart this process with `devices` CPU devices when it has another count (the XLA flag
    must be set before JAX starts its backend)."""
    import re

    flag = f"--xla_force_host_platform_device_count={devices}"
    if flag in os.environ.get("XLA_FLAGS", "") or os.environ.get("FLOWRL_PLAN_RESTARTED"):
        return
    others = re.sub(
        r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", "")
    )
    env = dict(os.environ, XLA_FLAGS=f"{others} {flag}".strip(), JAX_PLATFORMS="cpu")
    env["FLOWRL_PLAN_RESTARTED"] = "1"
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, "-m", "flowrl_jax.plan", *sys.argv[1:]], env)


def main(argv) -> None:
    del argv
    cli.setup_logging()
    try:
        config = _CONFIG.value
        ensure_devices(config.plan.devices)
        phases = plan(config)
    except (*cli.USER_ERRORS,) as e:
        cli.fail(cli.message(e))
    print(table(phases, config))
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            rows = [dataclasses.asdict(x) | {"fits": x.fits} for x in phases]
            json.dump({"hardware": config.plan.to_dict(), "phases": rows}, f, indent=1)
    over = [x.program for x in phases if not x.fits]
    print(f"planned {len(phases)} phases; " + (f"do not fit: {over}" if over else "all fit"))
    sys.exit(1 if over else 0)


if __name__ == "__main__":
    from absl import flags

    _OUT = flags.DEFINE_string("out", "", "also write the phases to this JSON file")
    _CONFIG = cli.define_config_flag(sys.argv)
    app.run(main, flags_parser=cli.parse_flags)
