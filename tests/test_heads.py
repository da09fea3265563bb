"""The log-Z head is the spec's MLP over the prompt's mean-pooled hidden states (checked against a
numpy forward), with dropout only during updates and padding left out of the pool."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from flowrl_jax.algorithms import heads


def _gelu(x):  # exact GELU: x · Φ(x)
    return x * 0.5 * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def _layer_norm(x, scale, bias, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * scale + bias


def test_pool_prompt_is_the_masked_mean():
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(3, 5, 4)).astype(np.float32)
    mask = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]], np.int32)
    got = np.asarray(heads.pool_prompt(hidden, mask))
    want = np.stack([hidden[i][mask[i] == 1].mean(0) for i in range(3)])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    # The reference code's quirk: the last prompt token left out.
    got = np.asarray(heads.pool_prompt(hidden, mask, drop_last=True))
    np.testing.assert_allclose(got[0], hidden[0, 2:4].mean(0), rtol=1e-6, atol=1e-6)


def test_logz_head_matches_a_numpy_forward():
    D = 8
    head = heads.LogZHead(depth=2, dropout=0.1)
    params = head.init(jax.random.key(0), jnp.zeros((1, D)))["params"]
    shapes = jax.tree.map(lambda x: x.shape, params)
    assert shapes["Dense_0"]["kernel"] == (D, D) and shapes["Dense_2"]["kernel"] == (D, 1)
    assert set(params) == {"Dense_0", "LayerNorm_0", "Dense_1", "LayerNorm_1", "Dense_2"}
    x = np.random.default_rng(1).normal(size=(4, D)).astype(np.float32)
    p = jax.tree.map(np.asarray, params)
    h = x.astype(np.float64)
    for i in range(2):
        h = h @ p[f"Dense_{i}"]["kernel"] + p[f"Dense_{i}"]["bias"]
        h = _layer_norm(_gelu(h), p[f"LayerNorm_{i}"]["scale"], p[f"LayerNorm_{i}"]["bias"])
    want = (h @ p["Dense_2"]["kernel"] + p["Dense_2"]["bias"])[:, 0]
    got = np.asarray(head.apply({"params": params}, x, deterministic=True))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_dropout_only_during_updates():
    D = 16
    head = heads.LogZHead(depth=2, dropout=0.1)
    params = {"params": head.init(jax.random.key(0), jnp.zeros((1, D)))["params"]}
    x = jnp.ones((2, D))
    a = head.apply(params, x, deterministic=True)
    np.testing.assert_array_equal(a, head.apply(params, x, deterministic=True))
    b = head.apply(params, x, deterministic=False, rngs={"dropout": jax.random.key(1)})
    c = head.apply(params, x, deterministic=False, rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(b, c) and not np.allclose(a, b)
