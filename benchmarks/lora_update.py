"""The FlowRL update with LoRA against full fine-tuning, interleaved in one process.

    python -m benchmarks.lora_update [--pairs 5] [--sizes small] [--rank 8]

Both sides run the trainer's update (`trainer.step.update`, as benchmarks/train_step.py sets it up:
the same random Qwen3-shaped model, batch, micro-batches and remat policy, fp32 on the CPU): full
fine-tuning of every weight, and LoRA with rank-`--rank` adapters on every attention and MLP
projection (models/lora.py's default targets), the base frozen. Each pair runs full then LoRA (the
order swapped every pair) after one warm-up step each. Reported per side: the median seconds per
update and its range, the trained parameters, and the bytes of the optimiser state (Adam's two
moments of what is trained). The last line reads `lora_over_full step_time=<median of per-pair
ratios> opt_state_bytes=<ratio>` for the last size.
"""

from __future__ import annotations

import argparse
import statistics

import jax
import numpy as np

from benchmarks import seconds, train_step
from flowrl_jax.models import config_from_hf, init_params, lora, tiny


def nbytes(tree) -> int:
    return sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def sides(size: str, rank: int, seed: int = 0) -> dict:
    """{'full': OurUpdate, 'lora': OurUpdate} on the same model and batch."""
    batch, prompt, response = train_step.WORK[size]
    cfg = config_from_hf(tiny.BENCH_HF_CONFIGS[size], remat=train_step.REMAT)
    params = init_params(cfg, jax.random.key(seed))
    tokens, rewards, group = train_step.make_batch(seed, batch, prompt, response, cfg.vocab_size)
    lcfg = lora.default_config()
    lcfg.rank, lcfg.alpha = rank, 2.0 * rank
    adapters = lora.init(lcfg, params, jax.random.key(seed + 1))
    adapted_cfg = lora.model_config(cfg, lcfg)
    adapted = lora.with_adapters(jax.tree.map(np.array, params), adapters)  # its own buffers
    args = (tokens, rewards, group, prompt, train_step.MICRO_BATCHES, seed)
    return {
        "full": train_step.our_update(cfg, params, *args),
        "lora": train_step.our_update(adapted_cfg, adapted, *args),
    }


def run_size(size: str, rank: int, pairs: int) -> dict:
    updates = sides(size, rank)
    for u in updates.values():  # compile, then one warm-up step
        u.run(), u.run()
    times = {name: [] for name in updates}
    for i in range(pairs):
        order = list(updates) if i % 2 == 0 else list(updates)[::-1]
        for name in order:
            times[name].append(seconds(updates[name].run))
        print(f"pair {i + 1}/{pairs}: " + "  ".join(f"{n} {t[-1]:.3f} s" for n, t in times.items()))
    out = {}
    for name, u in updates.items():
        trained = lora.split(u.state.params)[0]
        out[name] = {
            "s": statistics.median(times[name]),
            "min": min(times[name]),
            "max": max(times[name]),
            "trained": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(trained)),
            "opt_state_bytes": nbytes(u.state.opt_state),
        }
    ratios = sorted(b / a for a, b in zip(times["full"], times["lora"]))
    out["ratio"] = (statistics.median(ratios), ratios[0], ratios[-1])
    return out


def report(size: str, rank: int, r: dict) -> None:
    batch, prompt, response = train_step.WORK[size]
    print(
        f"\n{size}: {batch} sequences x (prompt {prompt} + response {response}), fp32, FlowRL "
        f"update, remat {train_step.REMAT}, {train_step.MICRO_BATCHES} micro-batches; LoRA rank "
        f"{rank} on every projection"
    )
    print(f"{'side':<6} {'s (median)':>11} {'(min-max)':>15} {'trained':>12} {'opt state':>12}")
    for name in ("full", "lora"):
        x = r[name]
        print(
            f"{name:<6} {x['s']:>11.3f} ({x['min']:.3f}-{x['max']:.3f}) {x['trained']:>12,} "
            f"{x['opt_state_bytes'] / 1e6:>9.1f} MB"
        )
    med, lo, hi = r["ratio"]
    print(f"lora / full step time: {med:.3f} ({lo:.2f}-{hi:.2f}) over the pairs")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--sizes", default="small")
    parser.add_argument("--rank", type=int, default=8)
    args = parser.parse_args(argv)
    sizes = args.sizes.split(",")
    for size in sizes:
        if size not in train_step.WORK:
            parser.error(f"--sizes: unknown size {size!r}; known: {', '.join(train_step.WORK)}")
    if args.pairs < 1 or args.rank < 1:
        parser.error("--pairs and --rank must be >= 1")
    print(f"jax {jax.__version__}, backend {jax.default_backend()}")
    results = {}
    for size in sizes:
        results[size] = run_size(size, args.rank, args.pairs)
        report(size, args.rank, results[size])
    last = results[sizes[-1]]
    state = last["lora"]["opt_state_bytes"] / last["full"]["opt_state_bytes"]
    print(f"lora_over_full step_time={last['ratio'][0]:.3f} opt_state_bytes={state:.4f}")
    return results


if __name__ == "__main__":
    main()
