"""Full-sequence forward (the log-prob recomputation shape), ours against transformers, interleaved.

    python -m benchmarks.forward [--pairs 7] [--size small]

Both sides run the identical model and weights (a random `transformers` checkpoint saved, then loaded
by `load_hf`), fp32 on the CPU, batch 8 x 256 tokens. Rows alternate ours / torch for `--pairs` pairs
after a warm-up, with an fp32 matmul peak measured beside each of our steps for MFU. Prints the
median ratio (torch seconds / ours) and its spread.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

import jax
import numpy as np

from benchmarks import matmul_peak, seconds
from flowrl_jax.models.families import config_from_hf
from flowrl_jax.trainer import metrics


def forward_flops(hf: dict, batch: int, length: int) -> float:
    """The trainer's count of a forward (flowrl_jax/trainer/metrics.py) with attention over the
    full (unmasked) square, as transformers computes it."""
    cfg = config_from_hf(hf)
    tokens = batch * length
    return metrics.forward_flops(cfg, tokens) + metrics.attention_flops(cfg, tokens * length)


def main() -> None:
    import torch
    import transformers

    from flowrl_jax.models import load_hf, tiny

    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="small", choices=sorted(tiny.BENCH_HF_CONFIGS))
    parser.add_argument("--pairs", type=int, default=7)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    args = parser.parse_args()
    hf = tiny.BENCH_HF_CONFIGS[args.size]
    cfg_kwargs = {k: v for k, v in hf.items() if k != "model_type"}
    torch.manual_seed(0)
    reference = transformers.AutoModelForCausalLM.from_config(
        transformers.AutoConfig.for_model("qwen3", **cfg_kwargs), dtype=torch.float32
    ).eval()
    with tempfile.TemporaryDirectory() as path:
        reference.save_pretrained(path)
        ours = load_hf(path)
    tokens = np.random.default_rng(0).integers(0, hf["vocab_size"], (args.batch, args.length))
    mask = np.ones_like(tokens)
    ids = torch.tensor(tokens)

    def run_ours():
        ours(tokens, mask).block_until_ready()

    def run_torch():
        with torch.no_grad():
            return reference(input_ids=ids).logits

    compile_s = seconds(run_ours)
    run_ours(), run_torch()  # warm-up
    flops = forward_flops(hf, args.batch, args.length)
    rows = []
    for _ in range(args.pairs):
        peak = matmul_peak()
        t_ours, t_torch = seconds(run_ours), seconds(run_torch)
        rows.append((t_ours, t_torch, peak))
    print(
        f"jax {jax.__version__} / torch {torch.__version__} / transformers "
        f"{transformers.__version__}; {args.size}, fp32, batch {args.batch} x {args.length}, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"our first call (compile + run): {compile_s:.2f} s")
    print(
        f"{'pair':>4} {'ours s':>8} {'torch s':>8} {'ratio':>6} {'ours GFLOP/s':>13} "
        f"{'peak GFLOP/s':>13} {'MFU':>6}"
    )
    for i, (a, b, peak) in enumerate(rows):
        print(
            f"{i:>4} {a:>8.4f} {b:>8.4f} {b / a:>6.2f} {flops / a / 1e9:>13.1f} "
            f"{peak / 1e9:>13.1f} {flops / a / peak:>6.1%}"
        )
    med = [statistics.median(col) for col in zip(*rows)]
    mfus = sorted(flops / a / peak for a, _, peak in rows)
    print(
        f"median: ours {med[0]:.4f} s, torch {med[1]:.4f} s, peak {med[2] / 1e9:.0f} GFLOP/s, "
        f"MFU {statistics.median(mfus):.1%} ({mfus[0]:.1%}-{mfus[-1]:.1%})"
    )
    ratios = sorted(b / a for a, b, _ in rows)
    print(
        f"forward_ratio_vs_transformers {args.size}={statistics.median(ratios):.2f} "
        f"(min {ratios[0]:.2f}, max {ratios[-1]:.2f}, {len(rows)} pairs)"
    )


if __name__ == "__main__":
    main()
