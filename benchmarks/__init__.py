"""Benchmarks: each prints a table and a last line of ratios; BENCHMARKS.md records the figures.
FLOP counts and the matmul peak are the trainer's own (flowrl_jax/trainer/metrics.py)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import time


def seconds(fn) -> float:
    """Wall seconds of one call of fn()."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


@contextlib.contextmanager
def worktree(repo: str, revision: str):
    """A detached git worktree of `repo` at `revision` (its path) for the block, removed after:
    the other side of a before / after comparison."""
    with tempfile.TemporaryDirectory() as scratch:
        tree = os.path.join(scratch, "base")
        argv = ["git", "worktree", "add", "--detach", "-q", tree, revision]
        subprocess.run(argv, cwd=repo, check=True)
        try:
            yield tree
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", tree], cwd=repo)


def matmul_peak() -> float:
    """The fp32 matmul peak measured beside each benchmark step (2048 x 2048, best of 3)."""
    from flowrl_jax.trainer.metrics import measured_matmul_peak

    return measured_matmul_peak(2048, 3)
