"""Compile time and program size against depth: layers run under a scan, so 16 layers should compile
about as fast as 2 (an unrolled decoder's compile time grows linearly with depth).

    python -m benchmarks.compile_depth [--layers 2,16] [--repeats 3]

Model: hidden 512, 8 heads (4 kv), ffn 2048, vocab 2048, fp32; batch 8 x 256 tokens. Measures the
forward and the gradient of a mean log-prob loss (what a train step compiles), each compiled
`--repeats` times (jax's compile cache is bypassed by a fresh jit each time); prints the median.
"""

from __future__ import annotations

import argparse
import statistics

import jax
import jax.numpy as jnp

from benchmarks import seconds
from flowrl_jax.models import DecoderConfig, config_from_hf, forward, param_shapes, tiny


def config(layers: int) -> DecoderConfig:
    """The 'small' benchmark shape at the given depth."""
    return config_from_hf(tiny.BENCH_HF_CONFIGS["small"], num_layers=layers)


def programs(cfg: DecoderConfig):
    def fwd(params, tokens, mask):
        return forward(cfg, params, tokens, mask).logits

    def grad(params, tokens, mask):
        def loss(p):
            logp = jax.nn.log_softmax(forward(cfg, p, tokens, mask).logits)
            return -jnp.mean(jnp.take_along_axis(logp[:, :-1], tokens[:, 1:, None], -1))

        return jax.grad(loss)(params)

    return {"forward": fwd, "grad": grad}


def measure(cfg: DecoderConfig, name: str, repeats: int) -> tuple[float, int]:
    tokens = jax.ShapeDtypeStruct((8, 256), jnp.int32)
    params = param_shapes(cfg)
    lower = lambda fn: jax.jit(fn).lower(params, tokens, tokens)
    # A new function object each time (programs() builds them): no cache hit.
    fresh = [programs(cfg)[name] for _ in range(repeats)]
    times = [seconds(lambda fn=fn: lower(fn).compile()) for fn in fresh]
    size = len(lower(programs(cfg)[name]).as_text())
    return statistics.median(times), size


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", default="2,16")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    depths = [int(x) for x in args.layers.split(",")]
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, fp32")
    print(f"{'program':<8} {'layers':>6} {'lower+compile s':>16} {'StableHLO chars':>16}")
    results = {}
    for name in ("forward", "grad"):
        for depth in depths:
            seconds, size = measure(config(depth), name, args.repeats)
            results[name, depth] = seconds
            print(f"{name:<8} {depth:>6} {seconds:>16.2f} {size:>16,}")
    lo, hi = depths[0], depths[-1]
    print(
        "compile_time_ratio "
        + " ".join(f"{n}={results[n, hi] / results[n, lo]:.2f}" for n in ("forward", "grad"))
        + f"  ({hi} layers / {lo} layers)"
    )


if __name__ == "__main__":
    main()
