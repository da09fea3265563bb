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
import time

import jax
import jax.numpy as jnp
import numpy as np


def matmul_peak(n: int = 2048) -> float:
    """fp32 FLOP/s of one jitted n x n matmul, best of 3."""
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = min(_timed(lambda: f(a).block_until_ready()) for _ in range(3))
    return 2 * n**3 / best


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def matmul_params(hf: dict) -> int:
    """Weights each token multiplies by: the layers' projections and the LM head (no embedding)."""
    d, f, L = hf["hidden_size"], hf["intermediate_size"], hf["num_hidden_layers"]
    h, k, dh = hf["num_attention_heads"], hf["num_key_value_heads"], hf["head_dim"]
    return L * (d * (h + 2 * k) * dh + h * dh * d + 3 * d * f) + d * hf["vocab_size"]


def forward_flops(hf: dict, batch: int, length: int) -> float:
    L, h, dh = hf["num_hidden_layers"], hf["num_attention_heads"], hf["head_dim"]
    attention = L * 2 * length * h * dh  # scores and weighted sum, full (unmasked) square
    return 2 * batch * length * (matmul_params(hf) + attention)


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

    compile_s = _timed(run_ours)
    run_ours(), run_torch()  # warm-up
    flops = forward_flops(hf, args.batch, args.length)
    rows = []
    for _ in range(args.pairs):
        peak = matmul_peak()
        t_ours, t_torch = _timed(run_ours), _timed(run_torch)
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
