"""Micro-batches: a mini-batch's gradient summed over pieces that run one after another inside one
compiled loop, so that one piece's activations live at a time. The RL update and scoring
(trainer/step.py) and SFT (trainer/sft.py) all go through `gradients` / `loop`; a piece is either
a strided share of the rows (`split_rows`) or a few packed rows (trainer/packing.py), whose count
is known only when the program runs (`used`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def split_rows(k: int, x):
    """[B, ...] -> [k, B/k, ...]; micro-batch j holds rows j, j + k, j + 2k, ...: strided, so on a
    batch split in contiguous blocks over devices every device holds a slice of every micro-batch
    (a contiguous split would put each micro-batch on a few devices)."""
    return x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)


def merge_rows(k: int, x):
    """The inverse of split_rows: [k, B/k, ...] -> [B, ...] in the mini-batch's row order."""
    return x.swapaxes(0, 1).reshape(k * x.shape[1], *x.shape[2:])


def _piece(pieces, j):
    return jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, j, keepdims=False), pieces)


def loop(body, carry, pieces, used=None):
    """Run body(carry, j, piece_j) -> (carry, out) over the pieces (a pytree whose leaves have a
    leading axis of M) in order -> (carry, outs stacked [M, ...]). used: a traced count; only
    the first `used` pieces run (the rest are padding) and their outs stay zero."""
    M = jax.tree.leaves(pieces)[0].shape[0]
    if used is None:
        return jax.lax.scan(lambda c, jx: body(c, *jx), carry, (jnp.arange(M), pieces))
    shapes = jax.eval_shape(lambda c, x: body(c, jnp.int32(0), x)[1], carry, _piece(pieces, 0))
    outs = jax.tree.map(lambda s: jnp.zeros((M, *s.shape), s.dtype), shapes)

    def step(j, state):
        c, o = body(state[0], j, _piece(pieces, j))
        put = lambda buf, x: jax.lax.dynamic_update_index_in_dim(buf, x, j, 0)
        return c, jax.tree.map(put, state[1], o)

    return jax.lax.fori_loop(0, used, step, (carry, outs))


def gradients(loss_fn, params, pieces, used=None):
    """Σ_j of loss_fn(params, j, piece_j) -> (loss, aux) and of its gradient, over the pieces
    (`loop`) -> (Σ loss, Σ gradients in float32 whatever the parameters' dtype, aux stacked)."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def body(carry, j, x):
        (value, aux), g = grad_fn(params, j, x)
        total, grads = carry
        return (total + value, jax.tree.map(lambda a, b: a + b.astype(jnp.float32), grads, g)), aux

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    (total, grads), aux = loop(body, (jnp.float32(0), zeros), pieces, used)
    return total, grads, aux
