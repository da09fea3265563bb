"""One short run on whatever accelerator JAX sees: the numbers that say whether the trainer uses it.

    python -m benchmarks.device [--out DIR]   # on a GPU or TPU: Qwen2.5-0.5B / 1.5B shapes, bf16
    python -m benchmarks.device --reduced     # the CPU form (tests/test_benchmarks_device.py)

Random weights of the published shapes (models.KNOWN_SHAPES), nothing downloaded. Rows:
- decode: the slot sampler (`rollout.slots`) on 0.5B, 256 slots, 256 requests of a 128-token
  prompt that all run to 256 new tokens, with each decode attention that runs on the device
  (`model.decode_attention`: XLA's, and the Pallas kernel of a GPU or a TPU). Tokens per second over the whole call (prefill
  included), and the fraction of the memory-bandwidth roofline: the bytes a decode step must read
  (the weights' matmul parameters in the compute dtype, and each row's filled KV cache), summed
  over the steps, over the device's peak bandwidth, divided by the measured time. Prefill is not
  in the roofline, so the fraction is a lower bound.
- update: MFU of FlowRL's update (`trainer.step.update`, as the trainer runs it: fp32 master
  weights, bf16 compute, remat 'dots', 4 micro-batches) on 16 sequences of 256 + 768 tokens, at
  0.5B with each attention implementation that runs on the device side by side, and at 1.5B with
  'auto'. FLOPs 6 · N · tokens (N: the matmul parameters, LM head included; attention's own
  products left out, as benchmarks/train_step.py) over the device's dense bf16 peak
  (trainer.metrics.PEAK_FLOPS).
- rl step: the fused RL step (FlowRL) on 0.5B, 8 prompts x 8 samples, 128 + 256 tokens, 256
  slots, with its per-phase times (`train.fused_phase_times`).
Each timed figure is the median of TIMED calls after one warm call (which holds the compile).
On the CPU the peaks are measured (an fp32 matmul, a large reduction), and --reduced runs tiny
shapes in fp32, with one update shape (its 'auto' row repeats the row of what 'auto' picks). The last line reads `device=<kind> decode_roofline=<x> mfu_0_5b=<y> mfu_1_5b=<z>` (the better
decode and 0.5B rows);
--out writes the rows as device.json and the table as device.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import rl_step, seconds
from benchmarks.train_step import make_batch, our_update

TIMED = 3
# Peak memory bandwidth, bytes/s, by device kind (the vendors' data sheets: H200 4.8 TB/s, H100
# SXM 3.35, H100 PCIe 2.0, A100 80GB 2.0; TPU v6e 1.64, v5p 2.77, v5e 0.82, v4 1.2). The first
# name found in jax's device_kind wins.
PEAK_BANDWIDTH = (
    ("H200", 4.8e12),
    ("H100 PCIe", 2.0e12),
    ("H100", 3.35e12),
    ("A100", 2.0e12),
    ("TPU v6", 1.64e12),
    ("TPU v5p", 2.77e12),
    ("TPU v5", 0.82e12),
    ("TPU v4", 1.2e12),
)


@dataclasses.dataclass(frozen=True)
class Shapes:
    dtype: str
    decode: tuple  # model, slots, requests, prompt length, new tokens
    updates: tuple  # (model, sequences, prompt, response)
    rl_step: tuple  # model, prompts, prompt length, new tokens, slots


FULL = Shapes(
    "bfloat16",
    ("qwen2.5-0.5b", 256, 256, 128, 256),
    (("qwen2.5-0.5b", 16, 256, 768), ("qwen2.5-1.5b", 16, 256, 768)),
    ("qwen2.5-0.5b", 8, 128, 256, 256),
)
REDUCED = Shapes(
    "float32",
    ("tiny", 16, 32, 16, 16),
    (("tiny", 8, 16, 48), ("tiny", 8, 16, 48)),
    ("tiny", 2, 16, 16, 8),
)


@dataclasses.dataclass
class Row:
    what: str
    model: str
    attention: str
    seconds: float
    rate: str  # the row's own figure, as printed
    fraction: float  # of the roofline (decode) or the peak (update); nan where none
    detail: str = ""


def model_config(name: str, dtype: str, **overrides):
    from flowrl_jax.models import known_config, tiny
    from flowrl_jax.models.families import config_from_hf

    if name == "tiny":
        return config_from_hf(dict(tiny.BENCH_HF_CONFIGS["tiny"]), dtype=dtype, **overrides)
    return known_config(name, dtype=dtype, **overrides)


def peaks() -> tuple[float, float, str]:
    """(dense FLOP/s, bytes/s, where from) of one device: the trainer's FLOP peak
    (`metrics.mesh_peak_flops`: the data sheet, or a measured matmul on the CPU) and the
    bandwidth table above, else a measured reduction."""
    from flowrl_jax import mesh as mesh_lib
    from flowrl_jax.trainer.metrics import mesh_peak_flops

    flops, source = mesh_peak_flops(mesh_lib.make_mesh({}, jax.devices()[:1]))
    kind = jax.devices()[0].device_kind
    bandwidth = next((b for name, b in PEAK_BANDWIDTH if name in kind), None)
    if bandwidth is None:
        bandwidth, source = measured_bandwidth(), f"{source}; bandwidth measured (a reduction)"
    return flops, bandwidth, source


def measured_bandwidth(mb: int = 256) -> float:
    """Bytes/s of a sum over an `mb` MB fp32 array (best of 3): the rate a read-bound step sees."""
    x = jnp.ones((mb * 2**18,), jnp.float32)
    f = jax.jit(jnp.sum)
    f(x).block_until_ready()
    best = min(seconds(lambda: f(x).block_until_ready()) for _ in range(3))
    return x.nbytes / best


def kinds() -> list[str]:
    """The attention implementations that run on this backend: XLA's, and the kernel 'auto'
    picks there (on the CPU splash, in interpret mode)."""
    from flowrl_jax.models import kernels

    backend = jax.default_backend()
    kernel = "splash" if backend == "cpu" else kernels.AUTO.get(backend, "xla")
    return ["xla"] if kernel == "xla" else ["xla", kernel]


def timed(fn) -> tuple[float, float]:
    """(first call's seconds, median of TIMED more)."""
    first = seconds(fn)
    return first, statistics.median(seconds(fn) for _ in range(TIMED))


def decode_kinds() -> list[str]:
    """The slot sampler's decode attentions that run here: XLA's, and the backend's Pallas
    kernel (on the CPU both, in interpret mode)."""
    from flowrl_jax.models import kernels

    backend = jax.default_backend()
    if backend == "cpu":
        return ["xla", "pallas_gpu", "pallas_tpu"]
    return ["xla"] + ([kernels.AUTO_DECODE[backend]] if backend in kernels.AUTO_DECODE else [])


def decode(shapes: Shapes, bandwidth: float, kind: str) -> Row:
    from flowrl_jax.models import Model
    from flowrl_jax.rollout import Sampler, SamplingParams
    from flowrl_jax.rollout.slots import SlotSettings

    name, slots, requests, prompt, new = shapes.decode
    cfg = model_config(name, shapes.dtype, param_dtype=shapes.dtype, decode_attention=kind)
    params = Model.random(cfg, 0).params
    n = 8
    prompts = np.random.default_rng(0).integers(3, cfg.vocab_size, (requests // n, prompt))
    sp = SamplingParams(max_new_tokens=new, n=n, temperature=1.0)
    sampler = Sampler(cfg, prompt_buckets=(prompt,), slots=SlotSettings(slots, prefill_rows=64))
    limits = np.full(requests, new, np.int32)

    def run():
        out = sampler(params, prompts.tolist(), jax.random.key(0), sp, limits=limits)
        assert int(out.mask.sum()) == requests * new

    _, t = timed(run)
    fraction = decode_bytes(cfg, slots, requests, prompt, new) / bandwidth / t
    rate = f"{requests * new / t:,.0f} tok/s"
    detail = f"{slots} slots, {requests} requests, {prompt} + {new} tokens"
    return Row("decode", name, kind, t, rate, fraction, detail)


def decode_bytes(cfg, slots: int, requests: int, prompt: int, new: int) -> float:
    """Bytes the decode steps of `requests` rows that all sample `new` tokens after `prompt`
    must read, on `slots` slots (whole waves): at each step the weights' matmul parameters once
    and every busy row's filled KV cache, all in the compute dtype. Step s (1 .. new - 1) feeds
    a row's token s - 1 (the first token comes from its prefill): its cache then holds
    prompt + s positions."""
    from flowrl_jax.trainer.metrics import matmul_params

    itemsize = jnp.dtype(cfg.dtype).itemsize
    weights = matmul_params(cfg) * itemsize
    per_position = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * itemsize
    waves, rows = -(-requests // slots), min(slots, requests)
    return waves * sum(weights + rows * (prompt + s) * per_position for s in range(1, new))


def update(name, sequences, prompt, response, attention, dtype, flops_peak) -> Row:
    from flowrl_jax.models import Model
    from flowrl_jax.trainer.metrics import matmul_params

    cfg = model_config(name, dtype, attention=attention, remat="dots")
    params = Model.random(cfg, 0).params
    tokens, rewards, group = make_batch(0, sequences, prompt, response, cfg.vocab_size)
    ours = our_update(cfg, params, tokens, rewards, group, prompt, micro_batches=4)
    first, t = timed(ours.run)
    flops = 6 * matmul_params(cfg) * sequences * (prompt + response)
    detail = f"{sequences} x ({prompt} + {response}) tokens, first call {first:.1f} s"
    rate = f"{flops / t / 1e12:.2f} TFLOP/s"
    return Row("update", name, attention, t, rate, flops / t / flops_peak, detail)


def fused_step(shapes: Shapes) -> Row:
    from flowrl_jax import mesh as mesh_lib
    from flowrl_jax.models import Model

    name, prompts, prompt, new, slots = shapes.rl_step
    cfg = model_config(name, shapes.dtype, remat="dots")
    mesh = mesh_lib.make_mesh({}, jax.devices()[:1])
    with tempfile.TemporaryDirectory() as workdir, jax.set_mesh(mesh):
        model = Model.random(cfg, 0)
        settings = {"rollout.slots": slots, "train.fused_phase_times": "true"}
        shape = dict(prompts=prompts, prompt_len=prompt, new=new)
        trainer = rl_step.our_trainer(
            "", "flowrl", True, True, mesh, workdir, model=model, settings=settings, **shape
        )
        draw_rows = np.random.default_rng(0).integers(3, cfg.vocab_size, (prompts, prompt))
        draw = lambda: (draw_rows.tolist(), list(range(prompts)))
        phases = []

        def run():
            metrics = trainer.fused_step(draw)
            phases.append({p: metrics.get(f"time/{p}", np.nan) for p in rl_step.PHASES})

        first, t = timed(run)
    median = {p: statistics.median(x[p] for x in phases[1:]) for p in rl_step.PHASES}
    detail = ", ".join(f"{p} {median[p]:.2f} s" for p in rl_step.PHASES)
    rate = f"{prompts * rl_step.GROUP * new / t:,.0f} tok/s"
    return Row("rl step", name, "auto", t, rate, np.nan, detail)


def run(reduced: bool) -> tuple[list[Row], dict]:
    from flowrl_jax.models import kernels

    shapes = REDUCED if reduced or jax.default_backend() == "cpu" else FULL
    flops_peak, bandwidth, source = peaks()
    rows = [decode(shapes, bandwidth, kind) for kind in decode_kinds()]
    small, large = shapes.updates
    for attention in kinds():
        rows.append(update(*small, attention, shapes.dtype, flops_peak))
    auto = kernels.resolve("auto", shapes.dtype)
    if large == small:  # the reduced form: the row of the implementation 'auto' picks, again
        same = next(r for r in rows if r.what == "update" and r.attention == auto)
        rows.append(dataclasses.replace(same, attention="auto", detail=f"as '{auto}' above"))
    else:
        rows.append(update(*large, "auto", shapes.dtype, flops_peak))
    rows.append(fused_step(shapes))
    info = dict(
        device=jax.devices()[0].device_kind,
        backend=jax.default_backend(),
        dtype=shapes.dtype,
        peak_flops=flops_peak,
        peak_bandwidth=bandwidth,
        peaks_from=source,
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    )
    return rows, info


def table(rows: list[Row], info: dict) -> str:
    lines = [
        f"device {info['device']} ({info['backend']}), {info['dtype']}; peaks {info['peaks_from']}: "
        f"{info['peak_flops'] / 1e12:.1f} TFLOP/s, {info['peak_bandwidth'] / 1e9:.0f} GB/s; {info['date']}",
        "",
        "| row | model | attention | s (median) | rate | of peak | detail |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for r in rows:
        share = "-" if np.isnan(r.fraction) else f"{r.fraction:.1%}"
        lines.append(
            f"| {r.what} | {r.model} | {r.attention} | {r.seconds:.3f} | {r.rate} | {share} | {r.detail} |"
        )
    return "\n".join(lines)


def summary(rows: list[Row], info: dict) -> str:
    decode_row = max((r for r in rows if r.what == "decode"), key=lambda r: r.fraction)
    updates = [r for r in rows if r.what == "update"]
    small = max(r.fraction for r in updates[:-1])  # the faster attention at the smaller size
    kind = info["device"].replace(" ", "_")
    return (
        f"device={kind} decode_roofline={decode_row.fraction:.2f} mfu_0_5b={small:.2f} "
        f"mfu_1_5b={updates[-1].fraction:.2f}"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reduced", action="store_true", help="tiny shapes (the CPU form)")
    parser.add_argument("--out", default="", help="a directory for device.json and device.md")
    args = parser.parse_args()
    rows, info = run(args.reduced)
    text = table(rows, info)
    print(text)
    line = summary(rows, info)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "device.json"), "w") as f:
            json.dump(
                dict(info, rows=[dataclasses.asdict(r) for r in rows], summary=line), f, indent=1
            )
        with open(os.path.join(args.out, "device.md"), "w") as f:
            f.write(text + "\n\n" + line + "\n")
    print(line)


if __name__ == "__main__":
    main()
