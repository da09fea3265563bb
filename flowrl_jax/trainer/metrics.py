"""Where a run's numbers go: `<workdir>/metrics.jsonl` (one JSON object per RL step), TensorBoard
event files under `<workdir>/tensorboard`, and one console line per step with a progress bar, ETA
and rates. Also the FLOP counts and device peaks behind the MFU figures.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time

import jax
import numpy as np

from flowrl_jax import storage
from flowrl_jax.models.families import DecoderConfig

log = logging.getLogger("flowrl_jax")

# Dense bf16 peak FLOP/s per device, from the vendors' data sheets (matched on device_kind).
PEAK_FLOPS = (
    ("TPU v6", 918e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 197e12),  # v5e ('TPU v5 lite')
    ("TPU v4", 275e12),
    ("H200", 989e12),
    ("H100 PCIe", 756e12),  # before "H100": the first name found in the device kind wins
    ("H100", 989e12),
    ("A100", 312e12),
)


# JAX's own durations of tracing, lowering and compiling a program (jax._src.dispatch).
COMPILE_EVENTS = frozenset(
    {
        "/jax/core/compile/jaxpr_trace_duration",
        "/jax/core/compile/jaxpr_to_mlir_module_duration",
        "/jax/core/compile/backend_compile_duration",
    }
)
_compiled = [0.0, False]  # seconds spent compiling in this process; listener registered


def compile_seconds() -> float:
    """Seconds this process has spent tracing, lowering and compiling programs so far."""
    if not _compiled[1]:
        _compiled[1] = True

        def listen(event: str, seconds: float, **_) -> None:
            if event in COMPILE_EVENTS:
                _compiled[0] += seconds

        jax.monitoring.register_event_duration_secs_listener(listen)
    return _compiled[0]


def clock() -> float:
    """perf_counter() without the time spent compiling: phase and step times on this clock leave
    the first step's compiles out (they are reported apart, as time/compile)."""
    return time.perf_counter() - compile_seconds()


def measured_matmul_peak(n: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of an fp32 n×n matmul on the default device (the CPU has no data-sheet figure)."""
    a = jax.device_put(np.random.default_rng(0).standard_normal((n, n), np.float32))
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def mesh_peak_flops(mesh, configured: float = 0.0) -> tuple[float, str]:
    """(peak FLOP/s of the whole mesh, where the figure comes from). configured: per device."""
    if configured > 0:
        return configured * mesh.size, "config"
    kind = jax.devices()[0].device_kind
    for name, flops in PEAK_FLOPS:
        if name in kind:
            return flops * mesh.size, f"{mesh.size} x {kind} data sheet (bf16)"
    # The CPU: virtual devices share the host's cores, so the host's matmul rate is the peak.
    return measured_matmul_peak() * jax.process_count(), f"{kind}: measured fp32 matmul per host"


def matmul_params(cfg: DecoderConfig) -> int:
    """Parameters that take part in a matmul per token: the layers' projections and the LM head
    (the embedding lookup is not a matmul)."""
    D, F, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    return L * (D * q + 2 * D * kv + q * D + 3 * D * F) + D * cfg.vocab_size


def forward_flops(cfg: DecoderConfig, tokens: int) -> float:
    """2·N per token (attention's score and value products are left out: small at these lengths;
    `attention_flops` counts them where they are not)."""
    return 2.0 * matmul_params(cfg) * tokens


def attention_flops(cfg: DecoderConfig, pairs: float) -> float:
    """Attention's score and weighted-value products over `pairs` (query, key) pairs, every head of
    every layer: 2 · 2 · L · H · Dh per pair."""
    return 4.0 * cfg.num_layers * cfg.num_heads * cfg.head_dim * pairs


class MetricsLog:
    """Writes each step's metrics (RL steps; SFT's optimiser steps under <workdir>/sft); only process
    0 writes files and prints. line(metrics) -> the progress line's figures (default: RL's)."""

    def __init__(self, workdir: str, total_steps: int, first_step: int = 0, line=None):
        self.total, self.first = total_steps, first_step
        self.line = line or rl_line
        self.enabled = jax.process_index() == 0
        self.start = time.perf_counter()
        if not self.enabled:
            return
        storage.makedirs(workdir)
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.lines = []  # a resumed run recomputes the steps after its checkpoint
        if storage.exists(self.path):
            self.lines = [
                line + "\n"
                for line in storage.read_text(self.path).splitlines()
                if line.strip() and json.loads(line)["step"] <= first_step
            ]
        storage.write_atomic(self.path, "".join(self.lines))
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        # Object storage has no append (TensorBoard's fsspec writer would start the object over
        # at each flush): there the event file is written locally and uploaded whole after each
        # step, as metrics.jsonl is rewritten whole.
        self.remote = storage.is_remote(workdir)
        self.tensorboard = os.path.join(workdir, "tensorboard")
        self.staging = tempfile.mkdtemp(prefix="flowrl-tensorboard-") if self.remote else None
        self.events = EventFileWriter(self.staging or self.tensorboard)
        if not self.remote:
            self.jsonl = open(self.path, "a")  # noqa: SIM115 -- closed in close()

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        line = json.dumps({"step": step, **metrics}) + "\n"
        if self.remote:
            self.lines.append(line)
            storage.write_atomic(self.path, "".join(self.lines))
        else:
            self.jsonl.write(line)
            self.jsonl.flush()
        from tensorboard.compat.proto import event_pb2, summary_pb2

        values = [
            summary_pb2.Summary.Value(tag=k, simple_value=float(v))
            for k, v in metrics.items()
            if isinstance(v, int | float)
        ]
        self.events.add_event(
            event_pb2.Event(
                wall_time=time.time(), step=step, summary=summary_pb2.Summary(value=values)
            )
        )
        self.events.flush()
        if self.remote:
            storage.upload(self.staging, self.tensorboard)
        log.info(self.progress(step, metrics))

    def progress(self, step: int, m: dict) -> str:
        done = step - self.first
        elapsed = time.perf_counter() - self.start
        eta = elapsed / max(done, 1) * (self.total - step)
        width = 20
        filled = round(width * step / max(self.total, 1))
        bar = "#" * filled + "-" * (width - filled)
        return (
            f"step {step}/{self.total} [{bar}] {m['time/step']:.1f} s/step"
            + (f" (+{m['time/compile']:.1f} s compile)" if m.get("time/compile", 0) > 0.05 else "")
            + f", ETA {_clock(eta)} | "
            + self.line(m)
        )

    def close(self) -> None:
        if not self.enabled:
            return
        self.events.close()
        if self.remote:
            storage.upload(self.staging, self.tensorboard)
            shutil.rmtree(self.staging, ignore_errors=True)
        else:
            self.jsonl.close()


def rl_line(m: dict) -> str:
    return (
        f"reward {m['reward/mean']:.3f} acc {m['accuracy']:.3f} loss {m['loss']:.4f} | "
        f"rollout {m['rollout/tokens_per_s']:,.0f} tok/s, train {m['train/tokens_per_s']:,.0f} "
        f"tok/s, MFU {m['perf/mfu']:.1%}"
    )


PLOTTED = ("reward/mean", "accuracy", "loss", "response/length_mean", "entropy", "grad_norm")


def plot(workdir: str) -> str | None:
    """`<workdir>/metrics.png`: the main curves of metrics.jsonl against the RL step. A plot that
    cannot be drawn (no matplotlib, a broken backend) is a warning: it must not fail a run that
    trained."""
    try:
        return _plot(workdir)
    except Exception as e:  # noqa: BLE001 -- the run's results are in metrics.jsonl regardless
        log.warning("metrics.png not drawn: %s: %s", type(e).__name__, e)
        return None


def _plot(workdir: str) -> str | None:
    path = os.path.join(workdir, "metrics.jsonl")
    if jax.process_index() != 0 or not storage.exists(path):
        return None
    rows = [json.loads(line) for line in storage.read_text(path).splitlines() if line.strip()]
    keys = [k for k in PLOTTED if any(k in r for r in rows)]
    if not rows or not keys:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.8), squeeze=False)
    for ax, key in zip(axes[0], keys):
        steps = [r["step"] for r in rows if key in r]
        ax.plot(steps, [r[key] for r in rows if key in r], marker="." if len(steps) < 50 else None)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("RL step", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(os.path.basename(storage.absolute(workdir).rstrip("/")), fontsize=9)
    fig.tight_layout()
    out = os.path.join(workdir, "metrics.png")
    storage.write_figure(fig, out, dpi=100)
    plt.close(fig)
    return out


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"
