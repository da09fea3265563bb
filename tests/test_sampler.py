"""The sampler: its distribution, its filters, its log-probs, its compiled-program count, its errors."""

import logging
import math

import jax
import jax.numpy as jnp
import marks
import numpy as np
import pytest

from flowrl_jax import mesh as mesh_lib
from flowrl_jax import testing
from flowrl_jax.models import Model, partition
from flowrl_jax.rollout import STOP_EOS, STOP_LENGTH, Sampler, SamplingParams, filter_logits
from flowrl_jax.rollout.logprobs import token_logprobs


def peaky_model(family="qwen3", vocab=32, seed=0, scale=8.0):
    """A tiny model whose next-token distributions are far from uniform (scaled output layer)."""
    cfg = testing.tiny_config(family, vocab_size=vocab)
    model = Model.random(cfg, seed)
    params = jax.tree.map(lambda x: x, model.params)
    params["lm_head"]["kernel"] = params["lm_head"]["kernel"] * scale
    return Model(cfg, params)


def next_token_probs(model, prefix, temperature):
    logits = np.asarray(model(np.asarray([prefix])))[0, -1].astype(np.float64) / temperature
    p = np.exp(logits - logits.max())
    return p / p.sum()


def chi_square_critical(df: int, alpha: float) -> float:
    """Upper alpha quantile of chi-square(df), Wilson-Hilferty (accurate to ~1% for df >= 5)."""
    z = {1e-3: 3.0902, 1e-4: 3.7190}[alpha]
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def chi_square(counts, probs, min_expected=5.0):
    """Pearson's statistic with bins of small expectation pooled into one; returns (stat, df)."""
    expected = probs * counts.sum()
    big = expected >= min_expected
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    keep = exp > 0
    return float(((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum()), int(keep.sum() - 1)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_frequencies_match_the_softmax(temperature):
    model = peaky_model()
    prompt = [3, 4, 5, 6, 7]
    sampler = Sampler(model.cfg, prompt_buckets=(8,))
    sp = SamplingParams(max_new_tokens=2, n=6000, temperature=temperature)
    out = sampler(model.params, [prompt], jax.random.key(11), sp)
    probs = next_token_probs(model, prompt, temperature)
    assert probs.max() > 0.1 and probs.min() < 0.005  # a distribution worth testing
    first = out.tokens[:, 0]
    stat, df = chi_square(np.bincount(first, minlength=32), probs)
    assert stat < chi_square_critical(df, 1e-3), (stat, df)
    # The decode path: the second token given the most frequent first token.
    top = np.bincount(first).argmax()
    second = out.tokens[first == top, 1]
    probs2 = next_token_probs(model, prompt + [int(top)], temperature)
    stat, df = chi_square(np.bincount(second, minlength=32), probs2)
    assert stat < chi_square_critical(df, 1e-3), (stat, df)
    # And a wrong distribution is rejected by the same test (the test can fail).
    stat, df = chi_square(np.bincount(first, minlength=32), next_token_probs(model, prompt, 1.3))
    assert stat > chi_square_critical(df, 1e-3)


def numpy_filter(logits, top_k, top_p):
    order = np.argsort(-logits, kind="stable")
    keep = np.zeros_like(logits, bool)
    if top_k:
        order = order[:top_k]
    p = np.exp(logits[order] - logits[order].max())
    p /= p.sum()
    before = np.cumsum(p) - p
    keep[order[before < top_p]] = True
    return keep


@pytest.mark.parametrize("top_k, top_p", [(5, 1.0), (0, 0.5), (4, 0.7), (1, 1.0), (0, 0.05)])
def test_filter_keeps_exactly_the_top_k_nucleus_set(top_k, top_p):
    logits = np.random.default_rng(0).normal(size=(6, 40)).astype(np.float32) * 3
    got = np.isfinite(np.asarray(filter_logits(jnp.asarray(logits), top_k, top_p)))
    for row, keep in zip(logits, got):
        np.testing.assert_array_equal(keep, numpy_filter(row, top_k, top_p))


@pytest.mark.parametrize("top_k, top_p", [(3, 1.0), (0, 0.6)])
def test_samples_never_leave_the_filtered_set(top_k, top_p):
    model = peaky_model(scale=3.0)
    prompt = [3, 9, 4]
    sampler = Sampler(model.cfg, prompt_buckets=(4,))
    sp = SamplingParams(max_new_tokens=1, n=2000, temperature=1.0, top_k=top_k, top_p=top_p)
    out = sampler(model.params, [prompt], jax.random.key(1), sp)
    logits = np.asarray(model(np.asarray([prompt])))[0, -1]
    allowed = numpy_filter(logits, top_k, top_p)
    assert 1 < allowed.sum() < 32
    emitted = np.unique(out.tokens[:, 0])
    assert allowed[emitted].all()
    assert len(emitted) == allowed.sum()  # and every allowed token shows up


@pytest.mark.parametrize("family", marks.families())
def test_temperature_to_zero_is_greedy(family):
    cfg = testing.tiny_config(family)
    model = Model.random(cfg, seed=2)
    tokens, mask = testing.left_padded_batch(0, batch=3, length=10, vocab=cfg.vocab_size)
    prompts = [list(t[m == 1]) for t, m in zip(tokens, mask)]
    sampler = Sampler(cfg, prompt_buckets=(10,))
    greedy = model.generate_greedy(tokens, mask, steps=12)
    out = sampler(model.params, prompts, jax.random.key(0), SamplingParams(12, temperature=0.0))
    np.testing.assert_array_equal(out.tokens, greedy)
    cold = sampler(model.params, prompts, jax.random.key(5), SamplingParams(12, temperature=1e-6))
    np.testing.assert_array_equal(cold.tokens, greedy)


def sample_with_stops(model, seed=0, mesh=None, segments=4):
    prompts = [[3, 4, 5], [6, 7, 8, 9, 10, 11, 12], [13], [14, 15, 16, 17]]
    sampler = Sampler(model.cfg, mesh=mesh, prompt_buckets=(8, 16), cache_segments=segments)
    # Many stop tokens, so that rows stop early at different steps.
    sp = SamplingParams(max_new_tokens=24, n=2, temperature=0.9, stop_tokens=tuple(range(3, 15)))
    return sampler(model.params, prompts, jax.random.key(seed), sp), sp


def test_sampling_logprobs_equal_a_full_recomputation():
    cfg = testing.tiny_config("llama")
    model = Model.random(cfg, seed=4)
    out, sp = sample_with_stops(model)
    stopped = out.stop_reason == STOP_EOS
    assert 0 < stopped.sum() < len(stopped)  # early-stopped rows and full-length rows
    lengths = out.mask.sum(1)
    assert (lengths[~stopped] == 24).all()
    assert np.isin(out.tokens[stopped, lengths[stopped] - 1], sp.stop_tokens).all()
    assert (out.tokens[out.mask == 0] == sp.pad_id).all() and (
        out.logprobs[out.mask == 0] == 0
    ).all()
    seq = np.concatenate([out.prompt_tokens, out.tokens], 1)
    seq_mask = np.concatenate([out.prompt_mask, out.mask], 1)
    P = out.prompt_tokens.shape[1]
    for chunk in (5, 1000):
        ref = np.asarray(token_logprobs(cfg, model.params, seq, seq_mask, sp.temperature, chunk))
        valid = out.mask == 1
        np.testing.assert_allclose(out.logprobs[valid], ref[:, P:][valid], atol=1e-5, rtol=0)


@pytest.mark.slow  # minutes on 2 cores; the default segments run in every sampler test
def test_cache_segments_do_not_change_the_samples():
    """Decode phases only change which cache slots are read (the unfilled ones are masked anyway):
    one segment, four and more segments than steps give the same samples for a seed."""
    model = Model.random(testing.tiny_config("qwen2"), seed=5)
    ref, _ = sample_with_stops(model, seed=1, segments=1)
    for segments in (4, 30):
        got, _ = sample_with_stops(model, seed=1, segments=segments)
        np.testing.assert_array_equal(got.tokens, ref.tokens)
        np.testing.assert_array_equal(got.stop_reason, ref.stop_reason)
        np.testing.assert_allclose(got.logprobs, ref.logprobs, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="cache_segments=0"):
        Sampler(model.cfg, cache_segments=0)


def test_chunked_logprobs_and_entropy_equal_unchunked_numpy():
    cfg = testing.tiny_config("qwen2")
    model = Model.random(cfg, seed=6)
    tokens, mask = testing.left_padded_batch(1, batch=3, length=19, vocab=cfg.vocab_size)
    logits = np.asarray(model(tokens, mask)).astype(np.float64) / 0.8
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    ref = np.take_along_axis(logp[:, :-1], tokens[:, 1:, None], -1)[..., 0]
    ref_entropy = -(np.exp(logp) * logp).sum(-1)[:, :-1]
    valid = mask[:, 1:] == 1
    for chunk in (1, 4, 7, 18, 512):
        got, entropy = token_logprobs(
            cfg, model.params, tokens, mask, 0.8, chunk, with_entropy=True
        )
        got, entropy = np.asarray(got), np.asarray(entropy)
        assert got.shape == tokens.shape and (got[:, 0] == 0).all()
        np.testing.assert_allclose(got[:, 1:][valid], ref[valid], atol=1e-5, rtol=0)
        np.testing.assert_allclose(entropy[:, 1:][valid], ref_entropy[valid], atol=1e-5, rtol=0)


def test_reproducible_for_a_seed_and_independent_of_the_mesh():
    cfg = testing.tiny_config("qwen3")
    model = Model.random(cfg, seed=7)
    a, _ = sample_with_stops(model, seed=3)
    b, _ = sample_with_stops(model, seed=3)
    c, _ = sample_with_stops(model, seed=4)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.tokens, c.tokens)
    mesh = mesh_lib.make_mesh({"fsdp": 4, "tensor": 2})
    shard = partition.shardings(partition.rules_for(cfg.family), model.params, mesh)
    sharded = Model(cfg, jax.device_put(model.params, shard), mesh=mesh)
    with jax.set_mesh(mesh):
        d, _ = sample_with_stops(sharded, seed=3, mesh=mesh)
    np.testing.assert_array_equal(d.tokens, a.tokens)
    np.testing.assert_allclose(d.logprobs, a.logprobs, atol=1e-5, rtol=0)


def test_one_bucket_compiles_once(caplog):
    cfg = testing.tiny_config("qwen3")
    model = Model.random(cfg, seed=8)
    sampler = Sampler(cfg, prompt_buckets=(16, 32))
    sp = SamplingParams(max_new_tokens=6, n=2, stop_tokens=(2,))
    rng = np.random.default_rng(0)
    with caplog.at_level(logging.INFO, logger="flowrl_jax.rollout.sampler"):
        for i in range(
            20
        ):  # prompt lengths 17..32 and 3 or 4 prompts: one (batch 4, prompt 32) bucket
            prompts = [list(rng.integers(3, 500, rng.integers(17, 33))) for _ in range(3 + i % 2)]
            out = sampler(model.params, prompts, jax.random.key(i), sp)
            assert out.tokens.shape == (len(prompts) * 2, 6)
    assert sampler.num_programs == 1
    compiled = [r for r in caplog.records if "compiled program" in r.getMessage()]
    assert len(compiled) == 1 and "batch 4, prompt 32" in compiled[0].getMessage()
    sampler(model.params, [[3] * 10], jax.random.key(0), sp)  # another bucket: another program
    assert sampler.num_programs == 2


def test_stop_reasons_and_padding_rows():
    cfg = testing.tiny_config("qwen2")
    model = Model.random(cfg, seed=9)
    sampler = Sampler(cfg, prompt_buckets=(8,))
    out = sampler(
        model.params, [[5, 6], [7], [8, 9, 10]], jax.random.key(0), SamplingParams(5, n=3)
    )
    assert out.tokens.shape == (9, 5)  # 3 prompts x 3 samples; the 4th (padding) row is gone
    assert (out.stop_reason == STOP_LENGTH).all() and (out.mask == 1).all()
    assert (out.prompt_tokens[0:3, -2:] == [5, 6]).all() and (out.prompt_tokens[3:6, -1] == 7).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_new_tokens=4, n=0), "n=0"),
        (dict(max_new_tokens=4, top_p=0.0), "top_p=0.0 must be in"),
        (dict(max_new_tokens=4, top_p=1.5), "top_p=1.5 must be in"),
        (dict(max_new_tokens=0), "max_new_tokens=0"),
        (dict(max_new_tokens=4, temperature=-1.0), "temperature=-1.0"),
    ],
)
def test_bad_sampling_params(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


def test_prompt_longer_than_the_largest_bucket():
    cfg = testing.tiny_config("qwen2")
    sampler = Sampler(cfg, prompt_buckets=(8, 16))
    with pytest.raises(ValueError, match="prompt length 17 is longer than the largest bucket 16"):
        sampler.pad([[1] * 17])
    with pytest.raises(ValueError, match="empty prompt"):
        sampler.pad([[1, 2], []])
