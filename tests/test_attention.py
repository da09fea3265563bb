"""The decode attention that reads each row's filled part of the cache
(`attention.ragged_decode`) against a numpy attention written out by hand, and against the dense
`attention.attend` it replaces on the CPU."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowrl_jax.models import attention


def reference(q, k, v, mask):
    """q [B, K, R, Dh], k [B, K, Dh, S], v [B, K, S, Dh], mask [B, S] in float64 numpy."""
    scores = np.einsum("bkrd,bkds->bkrs", q, k) / np.sqrt(q.shape[-1])
    scores = np.where(mask[:, None, None, :], scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return np.einsum("bkrs,bksd->bkrd", probs, v)


def cache_rows(rows, heads, group, dim, slots, seed=0):
    """Rows as the slot sampler leaves them: left padding of a prompt, then a response, each row
    filled to its own length (one to the last slot, one to a single slot)."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((rows, heads, group, dim))
    k = rng.standard_normal((rows, heads, dim, slots))
    v = rng.standard_normal((rows, heads, slots, dim))
    fill = rng.integers(1, slots + 1, rows)
    fill[0], fill[-1] = slots, 1
    pad = np.minimum(rng.integers(0, 4, rows), fill - 1)
    at = np.arange(slots)[None]
    mask = (at < fill[:, None]) & (at >= pad[:, None])
    return q, k, v, mask


@pytest.mark.parametrize("rows, keys", [(12, 8), (16, 5), (5, 64), (3, 1)])
def test_ragged_decode_equals_attention_by_hand(rows, keys):
    """GQA (2 query heads per KV head), left padding, fills from 1 to all 37 slots; blocks of 8
    and 5 (the last block overlaps the one before), one block wider than the cache, one slot a
    block; 12 rows in chunks of 4 (gcd with 8), 5 rows one at a time."""
    q, k, v, mask = cache_rows(rows, 2, 2, 16, 37)
    got = attention.ragged_decode(
        *(jnp.asarray(x, jnp.float32) for x in (q, k, v)), jnp.asarray(mask), jnp.float32, keys
    )
    np.testing.assert_allclose(np.asarray(got), reference(q, k, v, mask), rtol=0, atol=1e-5)
    dense = attention.attend(
        *(jnp.asarray(x, jnp.float32) for x in (q, (k,), (v,))),
        jnp.asarray(mask)[:, None],
        jnp.float32,
        True,
    )
    np.testing.assert_allclose(np.asarray(got), np.asarray(dense), rtol=0, atol=1e-5)


def test_ragged_decode_reads_bf16_bits_and_zeroes_a_row_that_sees_nothing():
    """The slot sampler's bf16 cache is held as uint16 bits (`to_bits`); a free slot's row may
    see no slot at all, and gives zeros instead of NaN."""
    q, k, v, mask = cache_rows(8, 2, 2, 16, 24, seed=1)
    mask[3] = False
    bf16 = lambda x: jnp.asarray(x, jnp.bfloat16)
    got = attention.ragged_decode(
        bf16(q),
        attention.to_bits(bf16(k)),
        attention.to_bits(bf16(v)),
        jnp.asarray(mask),
        jnp.bfloat16,
        8,
    )
    assert got.dtype == jnp.bfloat16
    got = np.asarray(got, np.float32)
    assert (got[3] == 0).all()
    seen = np.arange(8) != 3
    as_f32 = lambda x: np.asarray(bf16(x), np.float64)
    want = reference(*(as_f32(x)[seen] for x in (q, k, v)), mask[seen])
    np.testing.assert_allclose(got[seen], want, rtol=0, atol=2e-2)


def test_filled_counts_to_the_last_visible_slot():
    mask = np.zeros((3, 6), bool)
    mask[0, 2:5] = True
    mask[1, 5] = True
    np.testing.assert_array_equal(np.asarray(attention.filled(jnp.asarray(mask))), [5, 6, 0])
    assert jax.jit(attention.filled)(jnp.asarray(mask)).dtype == jnp.int32
