"""Attention kernels per backend. For a forward without a cache (log-probs, the update, SFT):
cuDNN's fused attention on NVIDIA GPUs, the Pallas splash kernel on TPUs, XLA's own
(`attention.py`) on the CPU; `model.attention` picks one ('auto': by backend). For the slot
sampler's decode step (`decode`, `model.decode_attention`): Pallas's GPU decode kernel, or our
Pallas TPU kernel.

Both kernels take the mask as per-token sequence ids: a query sees the keys at or before it that
carry its id. Real tokens carry their sequence's id (>= 1; packed rows hold several), padding 0.
At real positions that is exactly the XLA path's mask (causal, real keys, own segment); a padding
query sees earlier padding instead of nothing, and its output is never used.

Shapes: q [B, T, H, Dh], k and v [B, T, K, Dh] (GQA: query head h = k*R + r reads KV head k),
ids [B, T] int32 -> [B, T, H, Dh]. Under a mesh each device runs the kernel on its own rows and
KV heads (`mesh.on_own_rows`): a custom call left to the partitioner is gathered whole.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from flowrl_jax import mesh as mesh_lib
from flowrl_jax.models.families import HALF

# Which kernel 'auto' picks on each backend (jax.default_backend(), or lower.PLATFORMS' value).
AUTO = {"tpu": "splash", "gpu": "cudnn", "cpu": "xla"}


class SequenceIds(NamedTuple):
    """The decoder's attention mask when a kernel computes attention: ids [B, T] int32."""

    ids: jax.Array


def resolve(choice: str, dtype: str, platform: str | None = None) -> str:
    """`model.attention` -> the implementation a program for `platform` (default: this process's
    backend) uses. 'auto' takes cuDNN on a GPU only in bf16 / fp16 (its flash kernel has no fp32)."""
    if choice != "auto":
        return choice
    platform = platform or jax.default_backend()
    kind = AUTO.get(platform, "xla")
    return "xla" if kind == "cudnn" and dtype not in HALF else kind


# Which decode kernel 'auto' picks on each backend.
AUTO_DECODE = {"gpu": "pallas_gpu", "tpu": "pallas_tpu"}


def resolve_decode(choice: str, platform: str | None = None) -> str:
    """`model.decode_attention` -> what the slot sampler's decode step uses on `platform`."""
    if choice != "auto":
        return choice
    return AUTO_DECODE.get(platform or jax.default_backend(), "xla")


def keys_major(cfg) -> bool:
    """Whether the slot sampler caches keys [.., S, Dh] (the decode kernels' layout) rather
    than [.., Dh, S] (XLA's CPU decode dots' fastest: attention.py)."""
    return resolve_decode(cfg.decode_attention) != "xla"


def check(choice: str, platform: str | None = None) -> None:
    """A kernel (`model.attention` or `model.decode_attention`) asked for on a backend that
    cannot run it: an error before anything compiles (the Pallas kernels run on the CPU too, in
    interpret mode: slow, for tests)."""
    platform = platform or jax.default_backend()
    if choice == "cudnn" and platform != "gpu":
        raise ValueError(f"model.attention='cudnn' needs an NVIDIA GPU; this backend is {platform}")
    if choice == "splash" and platform not in ("tpu", "cpu"):
        raise ValueError(f"model.attention='splash' is a TPU kernel; this backend is {platform}")
    for kind, where in (("pallas_gpu", "gpu"), ("pallas_tpu", "tpu")):
        if choice == kind and platform not in (where, "cpu"):
            raise ValueError(
                f"model.decode_attention={kind!r} is a {where.upper()} kernel; this backend is "
                f"{platform}"
            )


def sequence_ids(kv_mask, segments=None) -> jax.Array:
    """kv_mask [B, T] (real tokens), segments [B, T] or None (packed rows: each sequence's
    index) -> ids [B, T] int32: padding 0, real tokens segment + 1 (1 without packing)."""
    real = 1 if segments is None else segments.astype(jnp.int32) + 1
    return jnp.where(kv_mask.astype(bool), real, 0).astype(jnp.int32)


def attend(kind: str, q, k, v, ids):
    """Causal attention of q over k, v within each token's sequence id (see the module)."""
    run = {"cudnn": _cudnn, "splash": _splash}[kind]
    heads = k.shape[2]  # rows over the data-parallel axes, KV heads (axis 2) over "tensor"
    return mesh_lib.on_own_rows(run, (q, k, v, ids), (2, 2, 2, None), heads, check_vma=False)


def _interpreted_on_cpu(run, *args):
    """run(*args, interpret=...) with Pallas's interpret mode in the CPU's program only (tests);
    the accelerators' programs call the compiled kernel."""
    return jax.lax.platform_dependent(
        *args,
        cpu=lambda *a: run(*a, interpret=True),
        default=lambda *a: run(*a, interpret=False),
    )


def _pad_to(x, multiple: int, axis: int = 1):
    pad = -x.shape[axis] % multiple
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return jnp.pad(x, widths) if pad else x


def _cudnn(q, k, v, ids):
    """cuDNN's flash attention, causal, with the sequence mask as its bias input ([B, 1, T, T]:
    cuDNN's own packed layout, which would not need it, wants Hopper and ids as offsets). T is
    padded to a multiple of 8 (cuDNN's bias path wants even lengths when training)."""
    T = q.shape[1]
    q, k, v, ids = (_pad_to(x, 8) for x in (q, k, v, ids))
    mask = ids[:, None, :, None] == ids[:, None, None, :]
    out = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True, implementation="cudnn")
    return out[:, :T]


def _splash_kernel(length: int, group: int, interpret: bool):
    """A splash MQA kernel for `group` query heads per KV head over `length` positions (a
    multiple of 128): causal, in blocks of up to 512 positions. Built anew in each trace: it
    holds its mask tables as arrays of the trace that made it."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    block = next(b for b in (512, 256, 128) if length % b == 0)
    sizes = sk.BlockSizes(
        block_q=block,
        block_kv=block,
        block_kv_compute=block,
        block_q_dkv=block,
        block_kv_dkv=block,
        block_kv_dkv_compute=block,
        block_q_dq=block,
        block_kv_dq=block,
    )
    mask = sm.MultiHeadMask([sm.CausalMask((length, length)) for _ in range(group)])
    return sk.make_splash_mqa_single_device(mask, block_sizes=sizes, interpret=interpret)


def _splash(q, k, v, ids):
    """The Pallas splash kernel (TPU; on the CPU in interpret mode), one call per row and KV
    head with its R query heads. T is padded to a multiple of 128 with id 0."""
    from jax.experimental.pallas.ops.tpu.splash_attention.splash_attention_kernel import (
        SegmentIds,
    )

    B, T, H, Dh = q.shape
    K = k.shape[2]
    R = H // K
    q, k, v, ids = (_pad_to(x, 128) for x in (q, k, v, ids))
    L = q.shape[1]
    q = (q * np.asarray(Dh**-0.5, q.dtype)).reshape(B, L, K, R, Dh).transpose(0, 2, 3, 1, 4)
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, K, L, Dh]

    def run(q, k, v, ids, interpret):
        kernel = _splash_kernel(L, R, interpret)
        per_head = lambda q, k, v, s: kernel(q, k, v, SegmentIds(s, s))
        return jax.vmap(jax.vmap(per_head, in_axes=(0, 0, 0, None)))(q, k, v, ids)

    out = _interpreted_on_cpu(run, q, k, v, ids)
    return out.transpose(0, 3, 1, 2, 4).reshape(B, L, H, Dh)[:, :T]


def _splits(length: int) -> tuple[int, int] | None:
    """(k_splits, block_k) for the GPU decode kernel over `length` cache slots: the largest
    block of keys (128 down to 16) that divides the window, then as many parts (up to 16) run
    side by side as divide it into whole blocks. None: a window not a multiple of 16."""
    for block in (128, 64, 32, 16):
        for splits in (16, 8, 4, 2, 1):
            if length % splits == 0 and (length // splits) % block == 0:
                return splits, block
    return None


def decode(kind: str, q, k, v, mask):
    """One query step of each row against its cached keys and values, reading only the slots
    from the row's first visible one to its last: Pallas's GPU decode kernel ('pallas_gpu') or
    ours for the TPU ('pallas_tpu'), each in interpret mode on the CPU. q [B, K, R, Dh]; k, v
    [B, K, S, Dh]; mask [B, S], each row's visible slots one run (a left-padded prompt, then its
    response) -> [B, K, R, Dh]. A row that sees no slot reads slot 0 (its output is unused)."""
    from flowrl_jax.models.attention import filled

    fill = jnp.maximum(filled(mask), 1)
    start = jnp.minimum(jnp.argmax(mask, axis=-1).astype(jnp.int32), fill - 1)
    run = {"pallas_gpu": _gpu_decode, "pallas_tpu": _tpu_decode}[kind]
    return _interpreted_on_cpu(run, q, k, v, start, fill)


def _gpu_decode(q, k, v, start, fill, interpret):
    """Pallas's GPU (Triton) decode kernel, one call per row and KV head with its R queries."""
    from jax.experimental.pallas.ops.gpu import decode_attention

    B, K, R, Dh = q.shape
    S = k.shape[2]
    split = _splits(S)
    if split is None:
        raise ValueError(
            f"model.decode_attention='pallas_gpu' reads a cache window in blocks of 16 slots; "
            f"this one holds {S} (rollout/slots.py `window` rounds it up to {KEY_BLOCK})"
        )
    per_head = lambda x: jnp.repeat(x, K)  # rows [B * K]: each KV head of each row
    flat = lambda x: x.reshape(B * K, *x.shape[2:])
    out = decode_attention.mqa(
        flat(q),
        flat(k),
        flat(v),
        per_head(start),
        per_head(fill),
        k_splits=split[0],
        block_k=split[1],
        interpret=interpret,
    )
    return out.reshape(B, K, R, Dh)


# Keys a block of the decode kernels: the TPU kernel's step, the GPU kernel's largest block;
# slots.window rounds a slot's window up to it.
KEY_BLOCK = 128
LANES = 128  # the TPU's vector lane count: the softmax statistics' scratch width


def _tpu_decode(q, k, v, start, fill, interpret):
    """A Pallas TPU (Mosaic) decode kernel: grid (row, KV head, key block); each step folds one
    block of KEY_BLOCK keys into a running softmax (flash-decoding), and only the blocks that
    hold a row's visible run are computed. The index map sends every block past a row's run to
    its last one (and before it to its first): the pipeline fetches a block once, so a row's
    unfilled window is never read from memory."""
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import tpu as pltpu

    B, K, R, Dh = q.shape
    S = k.shape[2]
    if S % KEY_BLOCK:
        raise ValueError(
            f"model.decode_attention='pallas_tpu' reads a cache window in blocks of {KEY_BLOCK} "
            f"slots; this one holds {S} (rollout/slots.py `window` rounds it up)"
        )
    blocks, scale = S // KEY_BLOCK, 1.0 / np.sqrt(Dh)

    def kv_block(b, h, j, start_ref, fill_ref):
        # lax.div, not //: Mosaic lowers floor division by asking the local TPU's kind.
        first = jax.lax.div(start_ref[b], KEY_BLOCK)
        last = jax.lax.div(jnp.maximum(fill_ref[b] - 1, 0), KEY_BLOCK)
        return (b, h, jnp.clip(j, first, last), 0)

    def kernel(start_ref, fill_ref, q_ref, k_ref, v_ref, o_ref, top, total, acc):
        b, j = pl.program_id(0), pl.program_id(2)
        lo, hi = start_ref[b], fill_ref[b]

        @pl.when(j == 0)
        def _():
            top[...] = jnp.full(top.shape, -jnp.inf, jnp.float32)
            total[...] = jnp.zeros(total.shape, jnp.float32)
            acc[...] = jnp.zeros(acc.shape, jnp.float32)

        @pl.when((j * KEY_BLOCK < hi) & ((j + 1) * KEY_BLOCK > lo))
        def _():
            contract_dh = (((1,), (1,)), ((), ()))
            scores = jax.lax.dot_general(
                q_ref[...], k_ref[...], contract_dh, preferred_element_type=jnp.float32
            )
            slot = j * KEY_BLOCK + jax.lax.broadcasted_iota(jnp.int32, scores.shape, 1)
            scores = jnp.where((slot >= lo) & (slot < hi), scores * scale, -jnp.inf)
            old = top[:, :1]
            new = jnp.maximum(old, scores.max(axis=1, keepdims=True))
            probs = jnp.exp(scores - new)
            rescale = jnp.exp(old - new)
            total[...] = jnp.broadcast_to(
                total[:, :1] * rescale + probs.sum(axis=1, keepdims=True), total.shape
            )
            top[...] = jnp.broadcast_to(new, top.shape)
            weighted = jax.lax.dot_general(
                probs.astype(v_ref.dtype),
                v_ref[...],
                (((1,), (0,)), ((), ())),
                preferred_element_type=jnp.float32,
            )
            acc[...] = acc[...] * rescale + weighted

        @pl.when(j == blocks - 1)
        def _():
            o_ref[...] = (acc[...] / total[:, :1]).astype(o_ref.dtype)

    row = pl.BlockSpec((None, None, R, Dh), lambda b, h, j, *_: (b, h, 0, 0))
    keys = pl.BlockSpec((None, None, KEY_BLOCK, Dh), kv_block)
    grid = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=2,
        grid=(B, K, blocks),
        in_specs=[row, keys, keys],
        out_specs=row,
        scratch_shapes=[
            pltpu.VMEM((R, LANES), jnp.float32),
            pltpu.VMEM((R, LANES), jnp.float32),
            pltpu.VMEM((R, Dh), jnp.float32),
        ],
    )
    return pl.pallas_call(
        kernel,
        grid_spec=grid,
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary")
        ),
        interpret=interpret,
    )(start, fill, q, k, v)


# The GPU kernels' custom calls (cuDNN's, Pallas's Triton) carry no serialisation guarantee, which
# `jax.export` refuses by default; lowering them only to see that a program lowers
# (flowrl_jax.lower) needs no such guarantee.
GPU_TARGETS = (
    "__gpu$xla.gpu.triton",  # Pallas's GPU kernels (the decode step)
    "__cudnn$fmhaSoftmax",
    "__cudnn$fmhaSoftmaxBackward",
    "__cudnn$fmhaScaleBiasSoftmax",
    "__cudnn$fmhaScaleBiasSoftmaxBackward",
)


@contextlib.contextmanager
def cudnn_lowerable():
    """Let programs with cuDNN attention lower anywhere for `jax.export` (flowrl_jax.lower):
    - jax marks cuDNN attention as needing devices to lower (its partitioning rule asks them),
      which an abstract mesh has not; our calls run inside `shard_map`, where no rule is used;
    - jax asks the local cuDNN its version while tracing: without one (a CPU host) it is told
      9.10 here, which passes jax's checks for these shapes; an installed cuDNN is asked."""
    from jax._src import dispatch
    from jax._src.cudnn import fused_attention_stablehlo as fused

    needs = dispatch.prim_requires_devices_during_lowering
    held = {p for p in needs if "dot_product_attention" in p.name}
    probe = fused.check_cudnn_version
    needs.difference_update(held)
    if fused.cuda_versions is None:
        fused.check_cudnn_version = lambda: 91000
    try:
        yield
    finally:
        fused.check_cudnn_version = probe
        needs.update(held)
