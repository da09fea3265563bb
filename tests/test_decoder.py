"""Decoder behaviour that does not need torch: scan compile size, cache, remat, dtypes, hidden."""

import jax
import jax.numpy as jnp
import marks
import numpy as np
import pytest

from flowrl_jax import testing
from flowrl_jax.models import Decoder, Model, forward, init_cache, param_shapes, positions_from_mask


def lowered_size(cfg):
    tokens = jax.ShapeDtypeStruct((2, 16), jnp.int32)
    params = param_shapes(cfg)
    return len(jax.jit(forward, static_argnums=0).lower(cfg, params, tokens, tokens).as_text())


def test_program_size_does_not_grow_with_depth():
    """Layers run under a scan: 16 layers lower to the same program as 2 (one layer body)."""
    small = lowered_size(testing.tiny_config("qwen3", num_layers=2))
    deep = lowered_size(testing.tiny_config("qwen3", num_layers=16))
    assert abs(deep - small) / small < 0.01, (small, deep)


@pytest.mark.parametrize("family", marks.families())
def test_chunked_prefill_with_cache_equals_full_forward(family):
    cfg = testing.tiny_config(family)
    model = Model.random(cfg, seed=1)
    tokens, mask = testing.left_padded_batch(
        0, batch=3, length=20, vocab=cfg.vocab_size, min_len=12
    )
    full = np.asarray(model(tokens, mask))
    decoder, positions = Decoder(cfg), positions_from_mask(jnp.asarray(mask))
    cache, kv_mask, outs = init_cache(cfg, 3, 24), np.zeros((3, 24), bool), []
    kv_mask[:, :20] = mask
    for start, stop in [(0, 7), (7, 8), (8, 20)]:  # a prefill chunk, one token, the rest
        out = decoder.apply(
            {"params": model.params},
            tokens[:, start:stop],
            positions[:, start:stop],
            kv_mask,
            cache,
            start,
        )
        cache = out.cache
        outs.append(np.asarray(out.logits))
    valid = mask.astype(bool)
    np.testing.assert_allclose(np.concatenate(outs, 1)[valid], full[valid], atol=2e-5, rtol=0)


def test_left_padding_does_not_change_a_row():
    cfg = testing.tiny_config("llama")
    model = Model.random(cfg, seed=2)
    row = np.arange(3, 13, dtype=np.int32)[None]
    padded = np.concatenate([np.zeros((1, 6), np.int32), row], 1)
    mask = np.concatenate([np.zeros((1, 6), np.int32), np.ones((1, 10), np.int32)], 1)
    np.testing.assert_allclose(
        np.asarray(model(padded, mask))[0, 6:], np.asarray(model(row))[0], atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("policy", ["full", "dots"])
def test_remat_gives_the_same_gradients(policy):
    cfg = testing.tiny_config("qwen2")
    params = Model.random(cfg, seed=3).params
    tokens, mask = testing.left_padded_batch(1, batch=2, length=8, vocab=cfg.vocab_size)

    def loss(c, p):
        return jnp.mean(jax.nn.log_softmax(forward(c, p, tokens, mask).logits)[..., 5])

    ref = jax.grad(lambda p: loss(cfg, p))(params)
    got = jax.grad(lambda p: loss(cfg.replace(remat=policy), p))(params)
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-5)


def test_bf16_params_and_compute_track_fp32():
    cfg = testing.tiny_config("qwen3")
    model = Model.random(cfg, seed=4)
    low_cfg = cfg.replace(dtype="bfloat16", param_dtype="bfloat16")
    low = Model(low_cfg, jax.tree.map(lambda x: x.astype(jnp.bfloat16), model.params))
    assert low.params["embed"]["embedding"].dtype == jnp.bfloat16
    tokens, mask = testing.left_padded_batch(2, batch=2, length=12, vocab=cfg.vocab_size)
    ref, out = np.asarray(model(tokens, mask)), low(tokens, mask)
    assert out.dtype == jnp.float32  # logits are always fp32
    valid = mask.astype(bool)
    # bf16 has an 8-bit mantissa: about 2-3 significant digits survive two layers.
    err = np.abs(np.asarray(out)[valid] - ref[valid]).max() / np.abs(ref[valid]).max()
    assert err < 0.05
    assert err > 1e-5  # and it really computed in bf16


def test_hidden_states_are_what_the_logits_are_made_from():
    cfg = testing.tiny_config("qwen3")
    model = Model.random(cfg, seed=5)
    tokens, mask = testing.left_padded_batch(3, batch=2, length=6, vocab=cfg.vocab_size)
    out = model.forward(tokens, mask)
    assert out.hidden.shape == (2, 6, cfg.hidden_size)
    kernel = np.asarray(model.params["lm_head"]["kernel"])
    np.testing.assert_allclose(np.asarray(out.hidden) @ kernel, np.asarray(out.logits), atol=1e-5)
    # Final norm applied: each real position's RMS is the final-norm scale's (all ones at init).
    rms = np.sqrt(np.mean(np.asarray(out.hidden)[mask.astype(bool)] ** 2, -1))
    np.testing.assert_allclose(rms, 1.0, atol=1e-3)
