"""The attention computations of the decoder, apart from its parameters: one dense form, two
blocked forms for long forwards, and the slot sampler's decode form that reads each row's filled
part of the cache only. Layouts: queries [B, K, T*R, Dh] (R query heads per KV head), keys
[B, K, Dh, S] in a cache (else [B, K, S, Dh]), values [B, K, S, Dh]."""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp

# Finite, so a row with no visible key (a left-pad query) gives a uniform softmax, not NaN.
MASKED = -1e30


def to_bits(x):
    """A 16-bit float array viewed as uint16 (others unchanged). The slot sampler keeps its KV
    cache as bits: writing rows into it is a scatter, and XLA's CPU backend computes a bf16 scatter
    in float32 over a converted copy of the whole buffer, so a loop can no longer update it in
    place (on a TPU or GPU the view costs nothing either way)."""
    if x.dtype.itemsize == 2 and jnp.issubdtype(x.dtype, jnp.floating):
        return jax.lax.bitcast_convert_type(x, jnp.uint16)
    return x


def from_bits(x, dtype):
    """The inverse of `to_bits`: uint16 bits viewed as the 16-bit float `dtype`."""
    if x.dtype == jnp.uint16:
        return jax.lax.bitcast_convert_type(x, dtype)
    return x


def dtype_of(buf, x):
    """The float type a buffer holds: `x`'s for a bits buffer, else the buffer's own."""
    return x.dtype if buf.dtype == jnp.uint16 else buf.dtype


def attend(q, ks, vs, mask, dt, k_minor):
    """q [B, K, T*R, Dh] (query t, group member r at row t*R + r); keys and values as consecutive
    segments of slots, ks[i] [B, K, Dh, S_i] if k_minor else [B, K, S_i, Dh], vs[i] [B, K, S_i, Dh];
    mask [B, T, S] over all S = sum S_i slots -> [B, K, T*R, Dh]. Each segment is read in place (one
    dot each); scores and softmax in fp32."""
    B, K, TR, Dh = q.shape
    T = mask.shape[1]
    spec = "bkqd,bkds->bkqs" if k_minor else "bkqd,bksd->bkqs"
    scores = [jnp.einsum(spec, q, k, preferred_element_type=jnp.float32) for k in ks]
    scores = jnp.concatenate(scores, axis=-1) / math.sqrt(Dh)  # [B, K, T*R, S]
    scores = scores.reshape(B, K, T, TR // T, -1)
    scores = jnp.where(mask[:, None, :, None, :], scores, MASKED).reshape(B, K, TR, -1)
    probs = jax.nn.softmax(scores, axis=-1).astype(dt)
    if len(vs) == 1:
        return jnp.einsum("bkqs,bksd->bkqd", probs, vs[0])
    bounds = list(itertools.accumulate(v.shape[2] for v in vs))[:-1]
    parts = jnp.split(probs, bounds, axis=-1)
    return sum(jnp.einsum("bkqs,bksd->bkqd", p, v) for p, v in zip(parts, vs))


def causal(q, k, v, mask, block, dt):
    """Attention of a forward without a cache (S = T, mask causal), one block of `block` queries at
    a time, each against the keys up to its last query only: the blocks of scores above the
    diagonal, all masked, are never computed. q [B, K, T, R, Dh], k and v [B, K, T, Dh], mask
    [B, T, T] -> [B, K, T*R, Dh]. The blocks are unrolled, each of its own shape, and XLA may run
    several at once: for short T (the long-context path keeps its rematerialised scan, whose
    memory holds one block)."""
    B, K, T, R, Dh = q.shape
    outs = []
    for lo in range(0, T, block):
        hi = min(T, lo + block)
        qb = q[:, :, lo:hi].reshape(B, K, (hi - lo) * R, Dh)
        out = attend(qb, (k[:, :, :hi],), (v[:, :, :hi],), mask[:, lo:hi, :hi], dt, False)
        outs.append(out.reshape(B, K, hi - lo, R, Dh))
    return jnp.concatenate(outs, axis=2).reshape(B, K, T * R, Dh)


def blocked(q, ks, vs, mask, block, dt, k_minor):
    """`attend` one block of `block` queries at a time: q [B, K, T, R, Dh] -> [B, K, T*R, Dh].
    Each block is rematerialised, so forward and backward hold one block's [block*R, S] scores per
    head instead of [T*R, S] (at T = 8192 the difference between 128 MB and 7.5 GB for a 7B model).
    Every block still reads all S keys: the saving is memory, not FLOPs."""
    B, K, T, R, Dh = q.shape
    pad = -T % block
    q = jnp.pad(q, ((0, 0), (0, 0), (0, pad), (0, 0), (0, 0)))
    mask = jnp.pad(mask, ((0, 0), (0, pad), (0, 0)))  # padded queries see nothing: uniform, dropped
    n = (T + pad) // block
    q = q.reshape(B, K, n, block * R, Dh).transpose(2, 0, 1, 3, 4)  # [n, B, K, block*R, Dh]
    mask = mask.reshape(B, n, block, -1).swapaxes(0, 1)  # [n, B, block, S]

    @jax.checkpoint
    def body(_, xs):
        return None, attend(xs[0], ks, vs, xs[1], dt, k_minor)

    _, out = jax.lax.scan(body, None, (q, mask))  # [n, B, K, block*R, Dh]
    return out.transpose(1, 2, 0, 3, 4).reshape(B, K, (T + pad) * R, Dh)[:, :, : T * R]


def filled(mask):
    """mask [B, S] -> [B] int32: one past each row's last visible slot (0: none visible)."""
    slots = jnp.arange(1, mask.shape[-1] + 1, dtype=jnp.int32)
    return jnp.max(jnp.where(mask, slots, 0), axis=-1)


def ragged_decode(q, k, v, mask, dt, keys: int, rows: int = 8):
    """One query step against a cache whose rows are filled to different lengths, reading each
    row's cache only up to its last visible slot (`filled`), `keys` slots at a time; the result
    equals `attend`'s. q [B, K, R, Dh]; k [B, K, Dh, S] and v [B, K, S, Dh] in `dt` or as its
    bits; mask [B, S] -> [B, K, R, Dh] in `dt`. A row that sees no slot gives zeros.

    The rows are sorted by fill, longest first, and taken `rows` at a time: each such chunk
    gathers its rows' blocks of `keys` slots up to the longest of them and folds each block into
    a running softmax (the flash-decoding form). The slot sampler's rows are requests at every
    point of their responses: on a long-tail table most rows have filled a quarter of the window
    (benchmarks/sampler.py), and `attend` reads all of it every step."""
    B, K, R, Dh = q.shape
    S = mask.shape[-1]
    keys, rows = min(keys, S), math.gcd(B, rows)
    fill = filled(mask)
    order = jnp.argsort(-fill)  # longest first: a chunk's first row is its longest
    q = q[order]
    mask, fill = mask[order], fill[order]

    def chunk(c, out):
        at = c * rows
        take = lambda x: jax.lax.dynamic_slice_in_dim(x, at, rows)
        qc, mc, idx = take(q), take(mask), take(order)

        def block(j, carry):
            top, total, acc = carry
            start = jnp.minimum(j * keys, S - keys)  # the last block may overlap the one before

            def load(buf, axis):
                """The chunk's rows' block of `buf`: one gather of `keys` slots a row (slicing
                a gathered row instead would read the whole row)."""
                corner = lambda i: (i,) + (0,) * (axis - 1) + (start,) + (0,) * (3 - axis)
                size = buf.shape[1:axis] + (keys,) + buf.shape[axis + 1 :]
                gather = jax.vmap(lambda i: jax.lax.dynamic_slice(buf, corner(i), (1, *size))[0])
                return from_bits(gather(idx), dt).astype(dt)

            kb, vb = load(k, 3), load(v, 2)  # [rows, K, Dh, keys], [rows, K, keys, Dh]
            slot = start + jnp.arange(keys)
            seen = jax.lax.dynamic_slice_in_dim(mc, start, keys, 1) & (slot >= j * keys)
            seen = seen[:, None, None, :]
            scores = jnp.einsum("bkqd,bkds->bkqs", qc, kb, preferred_element_type=jnp.float32)
            scores = scores / math.sqrt(Dh)
            new_top = jnp.maximum(top, jnp.max(jnp.where(seen, scores, MASKED), -1))
            probs = jnp.where(seen, jnp.exp(scores - new_top[..., None]), 0.0)
            scale = jnp.exp(top - new_top)
            acc = acc * scale[..., None] + jnp.einsum(
                "bkqs,bksd->bkqd", probs.astype(dt), vb, preferred_element_type=jnp.float32
            )
            return new_top, total * scale + probs.sum(-1), acc

        # From qc, not constants: inside shard_map a loop's carry must vary over the mesh as
        # its body's results do.
        like = qc[..., 0].astype(jnp.float32)
        init = (jnp.full_like(like, MASKED), jnp.zeros_like(like), jnp.zeros_like(qc, jnp.float32))
        blocks = (fill[at] + keys - 1) // keys
        top, total, acc = jax.lax.fori_loop(0, blocks, block, init)
        done = acc / jnp.where(total > 0, total, 1.0)[..., None]
        return jax.lax.dynamic_update_slice_in_dim(out, done, at, 0)

    out = jax.lax.fori_loop(0, B // rows, chunk, jnp.zeros_like(q, jnp.float32))
    return out[jnp.argsort(order)].astype(dt)
