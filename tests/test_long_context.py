"""Long context: blocked attention equals one-block attention, and the log-prob program of a
Qwen2.5-7B-shaped model at T = 8192 holds no [B, T, V] float32 buffer (forward or gradient)."""

import math
import re

import jax
import jax.numpy as jnp
import marks
import numpy as np
import pytest

from flowrl_jax import testing
from flowrl_jax.models import Decoder, Model, forward, init_cache, param_shapes, positions_from_mask
from flowrl_jax.models.families import known_config
from flowrl_jax.rollout import token_logprobs


@pytest.mark.parametrize("family", marks.families())
@pytest.mark.parametrize("blocks", [dict(attention_block=8), dict(causal_block=8)])
def test_blocked_attention_equals_one_block(family, blocks):
    """Blocks of 8 queries over T = 37 (not a multiple), left padding: the rematerialised
    long-context blocks, and the causal blocks of a short forward (8, 8, 8, 8 and 5 queries), each of
    which skips the keys past its last query."""
    one = testing.tiny_config(family, attention_block=0, causal_block=0)
    blocked = one.replace(**blocks)
    params = Model.random(one, seed=3).params
    tokens, mask = testing.left_padded_batch(
        1, batch=3, length=37, vocab=one.vocab_size, min_len=20
    )
    tokens, mask = jnp.asarray(tokens), jnp.asarray(mask)
    # Tokens predicted from a valid position. A row's first token is predicted from a pad position,
    # whose query sees no key: its output (a uniform average over whichever keys its block reads)
    # differs between the forms and is never scored, as only response tokens are.
    scored = mask * jnp.pad(mask[:, :-1], ((0, 0), (1, 0)))

    def loss(cfg, p):
        return jnp.sum(token_logprobs(cfg, p, tokens, mask, 1.0, 16) * scored)

    valid = np.asarray(mask, bool)
    assert (blocked.attention_block or blocked.causal_block) < 37
    ref, got = (np.asarray(forward(c, params, tokens, mask).logits) for c in (one, blocked))
    np.testing.assert_allclose(got[valid], ref[valid], atol=2e-5, rtol=0)
    g_ref, g_got = (jax.grad(loss, argnums=1)(c, params) for c in (one, blocked))
    for path, a in jax.tree_util.tree_leaves_with_path(g_ref):
        b = jax.tree_util.tree_leaves_with_path(g_got)
        b = dict((jax.tree_util.keystr(p), x) for p, x in b)[jax.tree_util.keystr(path)]
        scale = float(jnp.max(jnp.abs(a))) or 1.0
        np.testing.assert_allclose(np.asarray(b) / scale, np.asarray(a) / scale, atol=1e-5, rtol=0)


def test_blocked_prefill_into_the_cache_equals_one_block():
    """The sampler's prefill goes through the cache path: a 30-token prompt in blocks of 8."""
    one = testing.tiny_config("qwen2", attention_block=0)
    blocked = one.replace(attention_block=8)
    params = Model.random(one, seed=4).params
    tokens, mask = testing.left_padded_batch(2, batch=2, length=30, vocab=one.vocab_size, min_len=9)
    positions = positions_from_mask(jnp.asarray(mask))
    kv_mask = np.zeros((2, 34), bool)
    kv_mask[:, :30] = mask
    outs = [
        Decoder(cfg).apply(
            {"params": params}, tokens, positions, kv_mask, init_cache(cfg, 2, 34), 0
        )
        for cfg in (one, blocked)
    ]
    valid = mask.astype(bool)
    np.testing.assert_allclose(
        np.asarray(outs[1].logits)[valid], np.asarray(outs[0].logits)[valid], atol=2e-5, rtol=0
    )
    for key in ("k", "v"):
        np.testing.assert_allclose(outs[1].cache[key], outs[0].cache[key], atol=1e-6, rtol=0)


def full_logit_buffers(hlo: str, rows: int, vocab: int) -> list[str]:
    """f32 shapes in `hlo` that hold `vocab` logits for >= `rows` positions: [B, T, V]-sized."""
    found = []
    for shape in set(re.findall(r"f32\[([0-9,]+)\]", hlo)):
        dims = [int(d) for d in shape.split(",")]
        if vocab in dims:
            dims.remove(vocab)
            if math.prod(dims) >= rows:
                found.append(f"f32[{shape}]")
    return found


def compile_logprobs(cfg, T, chunk, grad):
    tok = jax.ShapeDtypeStruct((1, T), jnp.int32)

    def fn(p, t, m):
        return token_logprobs(cfg, p, t, m, 1.0, chunk)

    if grad:
        fn = jax.grad(lambda p, t, m: jnp.sum(token_logprobs(cfg, p, t, m, 1.0, chunk) * m))
    return jax.jit(fn).lower(param_shapes(cfg), tok, tok).compile()


@pytest.mark.parametrize("grad", [False, True], ids=["forward", "gradient"])
def test_no_full_logits_buffer_for_a_7b_model_at_8k(grad):
    cfg = known_config("qwen2.5-7b").replace(remat="full")
    T, V = 8192, cfg.vocab_size
    assert V == 152064
    full_bytes = (T - 1) * V * 4  # one [1, T-1, V] float32 buffer: 4.98 GB
    compiled = compile_logprobs(cfg, T, chunk=256, grad=grad)
    stats = compiled.memory_analysis()
    print(
        f"qwen2.5-7b T={T} {'grad' if grad else 'forward'}: temp {stats.temp_size_in_bytes / 1e9:.2f}"
        f" GB, arguments {stats.argument_size_in_bytes / 1e9:.2f} GB, "
        f"[1,T,V] f32 would be {full_bytes / 1e9:.2f} GB"
    )
    assert full_logit_buffers(compiled.as_text(), T - 1, V) == []
    if not grad:  # the forward's whole scratch is smaller than the one buffer it avoids
        assert stats.temp_size_in_bytes < full_bytes


def test_the_buffer_check_finds_unchunked_logits():
    """The detector above can fail: one chunk of T - 1 positions is a [1, T-1, V] buffer."""
    cfg = testing.tiny_config("qwen2")
    compiled = compile_logprobs(cfg, 64, chunk=63, grad=False)
    assert full_logit_buffers(compiled.as_text(), 63, cfg.vocab_size)
