"""Benchmarks: each prints a table and a last line of ratios; BENCHMARKS.md records the figures.
FLOP counts and the matmul peak are the trainer's own (flowrl_jax/trainer/metrics.py)."""

from __future__ import annotations

import time


def seconds(fn) -> float:
    """Wall seconds of one call of fn()."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def matmul_peak() -> float:
    """The fp32 matmul peak measured beside each benchmark step (2048 x 2048, best of 3)."""
    from flowrl_jax.trainer.metrics import measured_matmul_peak

    return measured_matmul_peak(2048, 3)
