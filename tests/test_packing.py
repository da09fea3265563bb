"""Packed scoring and update (trainer/packing.py). The layout against a numpy first-fit packer;
every algorithm's gradient, loss and metrics from packed micro-batches against jax.grad of the
loss over the unpacked mini-batch (tests/test_train_step.py's reference), with a sequence that
ends exactly at a row's budget; packed scoring against the unpacked forward; the same on a mesh;
a leak across segments is caught; budgets that cannot work are refused before compiling."""

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_train_step import (
    ACCUMULATION_CASES,
    GRAD_TOL,
    METRIC_ATOL,
    METRIC_RTOL,
    ROUNDING_DECIDED,
    _grad_error,
    _gradient_of_update,
    _one_pass,
    _setup,
)

from flowrl_jax import mesh as mesh_lib
from flowrl_jax.config import base_config
from flowrl_jax.trainer import check_sizes, packing
from flowrl_jax.trainer import step as step_lib


def numpy_first_fit(lengths, row_len):
    """Longest first (ties in row order), each into the first row with room -> row, offset."""
    fill, row, offset = [], np.zeros(len(lengths), int), np.zeros(len(lengths), int)
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        q = next((q for q, f in enumerate(fill) if f + lengths[i] <= row_len), len(fill))
        if q == len(fill):
            fill.append(0)
        row[i], offset[i] = q, fill[q]
        fill[q] += lengths[i]
    return row, offset


def test_the_layout_is_first_fit_and_keeps_every_token():
    """Random prompts and responses, one as long as a row, one empty response: each sequence's
    tokens lie contiguous at numpy's first-fit row and offset, with its own segment id and
    positions from 0; the micro-batch count is what the used rows need; unpack restores the
    response columns."""
    rng = np.random.default_rng(0)
    B, P, N, T, rows = 13, 6, 10, 16, 2
    p_len = rng.integers(1, P + 1, B)
    n_len = rng.integers(0, N + 1, B)
    p_len[3], n_len[3] = P, N  # P + N = T: ends exactly at the row's budget
    n_len[5] = 0
    mask = np.concatenate(
        [np.arange(P)[None] >= (P - p_len)[:, None], np.arange(N)[None] < n_len[:, None]], 1
    )
    tokens = np.where(mask, rng.integers(1, 50, (B, P + N)), 0).astype(np.int32)
    layout = packing.Layout.for_batch(B, T, rows)
    got = jax.jit(packing.pack, static_argnums=(2, 3))(tokens, mask, layout, P)
    row, offset = numpy_first_fit(p_len + n_len, T)
    flat = lambda x: np.asarray(x).reshape(-1, T)
    for i in range(B):
        real = tokens[i][mask[i]]
        where = slice(offset[i], offset[i] + len(real))
        np.testing.assert_array_equal(flat(got.tokens)[row[i], where], real)
        np.testing.assert_array_equal(flat(got.segments)[row[i], where], i + 1)
        np.testing.assert_array_equal(flat(got.positions)[row[i], where], np.arange(len(real)))
    assert int((flat(got.segments) > 0).sum()) == mask.sum()  # nothing else written
    np.testing.assert_array_equal(got.micro, row // rows)
    assert int(got.used) == -(-(row.max() + 1) // rows) < layout.micro_batches
    values = np.arange(layout.size, dtype=np.float32).reshape(-1, rows, T)
    back = np.asarray(packing.unpack(values, got.index, P))
    want = np.where(mask[:, P:], np.asarray(got.index)[:, P:], 0)
    np.testing.assert_array_equal(back, want)


def packed(spec, row_len, rows):
    return dataclasses.replace(spec, pack_len=row_len, pack_rows=rows)


@pytest.mark.parametrize(
    "name, changes",
    [  # CI runs FlowRL; the other algorithms and reductions are -m slow
        pytest.param(n, c, id=f"{n}-{c}", marks=[] if n == "flowrl" else [pytest.mark.slow])
        for n, c in ACCUMULATION_CASES
    ],
)
def test_packed_update_gives_the_gradient_and_metrics_of_one_pass(name, changes):
    """Rows as long as the longest sequence, two to a micro-batch: first fit lays the lengths
    [20, 11, 15, 8, 9, 16, 13, 9] as [20] [16] | [15] [13] | [11 9] [9 8]: one sequence fills a
    row alone, a second ends exactly at the budget behind another, and 3 of the layout's 4
    micro-batches run.
    The gradient, loss and metrics of jax.grad over the unpacked mini-batch, to 1e-5 (FlowRL with
    its log-Z dropout on: a sequence's mask does not depend on its row or micro-batch)."""
    spec, _, state, tokens, mask, batch = _setup(name, changes=changes)
    grads, loss, metrics = _one_pass(spec, state, tokens, mask, batch)
    lengths = np.asarray(mask).sum(1)
    assert lengths.tolist() == [20, 11, 15, 8, 9, 16, 13, 9] and tokens.shape[1] == 20
    layout = packing.Layout.for_batch(8, 20, 2)
    assert int(packing.pack(tokens, mask, layout, 8).used) == 3 < layout.micro_batches
    got_grads, got = _gradient_of_update(packed(spec, 20, 2), state, tokens, mask, batch)
    assert _grad_error(got_grads, grads) < GRAD_TOL
    assert set(got) == set(metrics) | {"loss", "grad_norm"}
    for key, value in (metrics | {"loss": loss}).items():
        if key not in ROUNDING_DECIDED:
            np.testing.assert_allclose(
                float(got[key]), float(value), rtol=METRIC_RTOL, atol=METRIC_ATOL, err_msg=key
            )


@pytest.mark.slow
def test_the_log_z_head_pools_each_prompt_without_its_last_token_when_asked():
    spec, _, state, tokens, mask, batch = _setup("flowrl")
    heads_cfg = spec.heads_cfg.copy_and_resolve_references()
    heads_cfg.logz.drop_last_prompt_token = True
    spec = dataclasses.replace(spec, heads_cfg=heads_cfg)
    grads, loss, _ = _one_pass(spec, state, tokens, mask, batch)
    got_grads, got = _gradient_of_update(packed(spec, 40, 1), state, tokens, mask, batch)
    assert _grad_error(got_grads, grads) < GRAD_TOL
    np.testing.assert_allclose(float(got["loss"]), float(loss), rtol=METRIC_RTOL)


def test_a_leak_across_segments_would_be_caught(monkeypatch):
    """The comparison can fail: packed rows whose tokens attend to the sequences beside them (one
    segment per row) give a gradient far off."""
    spec, _, state, tokens, mask, batch = _setup("grpo")
    grads, _, _ = _one_pass(spec, state, tokens, mask, batch)
    real = packing.pack

    def one_segment(*args, **kwargs):
        out = real(*args, **kwargs)
        return out._replace(segments=jnp.where(out.segments > 0, 1, 0))

    monkeypatch.setattr(packing, "pack", one_segment)
    got, _ = _gradient_of_update(packed(spec, 40, 2), state, tokens, mask, batch)
    assert _grad_error(got, grads) > 1000 * GRAD_TOL


@pytest.mark.parametrize("name", ["flowrl", "ppo"])  # reference log-probs; old values
def test_packed_scoring_equals_the_unpacked_forward(name):
    spec, _, state, tokens, mask, batch = _setup(name)
    ref_params = jax.tree.map(lambda x: x * 1.01, state.params["policy"])
    want = step_lib.score(spec, state.params, ref_params, tokens, mask)
    got = jax.jit(step_lib.score_rollout, static_argnums=(0, 5))(
        packed(spec, 40, 2), state.params, ref_params, tokens, mask, 8
    )
    m = np.asarray(batch.mask)
    for w, g in zip(want, got, strict=True):
        assert (w is None) == (g is None)
        if w is not None:
            np.testing.assert_allclose(np.asarray(g) * m, np.asarray(w) * m, rtol=0, atol=1e-5)


def test_the_packed_update_on_a_mesh_equals_one_device():
    """fsdp=4 x tensor=2, four packed rows per micro-batch (one per data-parallel device): the
    state after one step equals the single-device packed update's."""
    spec, optimizer, state, tokens, mask, batch = _setup("flowrl", family="llama")
    spec = packed(spec, 40, 4)
    want, want_m = jax.jit(lambda s, *a: step_lib.update(spec, optimizer, s, *a))(
        state, tokens, mask, batch
    )
    mesh = mesh_lib.make_mesh({"fsdp": 4, "tensor": 2})
    sharding = step_lib.state_shardings(mesh, state, spec.model.family)
    update = step_lib.jit_updates(spec, optimizer, len(tokens), 1, mesh, sharding)
    with jax.set_mesh(mesh):
        inputs = jax.device_put((tokens, mask, batch), mesh_lib.batch_sharding(mesh, 1))
        got, got_m = update(jax.device_put(state, sharding), *inputs)
    for a, b in zip(jax.tree.leaves(want.params), jax.tree.leaves(got.params), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=1e-5)
    np.testing.assert_allclose(float(got_m["loss"]), float(want_m["loss"]), rtol=1e-5)


def _config(**train):
    config = base_config()
    config.task.max_prompt_len = 32  # bucket 32; the default job's 16 response tokens
    for key, value in train.items():
        config.train[key] = value
    return config


@pytest.mark.parametrize(
    "train, message",
    [
        ({"pack_length": 20}, r"train.pack_length=20 is smaller than the longest prompt .*32"),
        ({"pack_length": 40}, r"train.pack_length=40 cannot hold the longest sequence .* 48"),
        (
            {"pack_length": 48, "micro_batch_tokens": 100},
            r"train.micro_batch_tokens=100 is not a whole number of packed rows of "
            r"train.pack_length=48 tokens that the 8 data-parallel devices share",
        ),
    ],
)
def test_packing_budgets_that_cannot_work_are_refused_before_compiling(train, message):
    mesh = mesh_lib.make_mesh({"fsdp": 8})
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=message):
        check_sizes(_config(**train), mesh)
    assert time.perf_counter() - t0 < 1.0
    check_sizes(_config(pack_length=48), mesh)  # one row per device: fine


def test_a_batch_longer_than_a_row_is_refused_while_tracing():
    """A prompt bucket the config did not foresee (longer than its row) fails before compiling."""
    spec, optimizer, state, tokens, mask, batch = _setup("grpo")
    with pytest.raises(ValueError, match=r"train.pack_length=16 tokens cannot hold .* 20 tokens"):
        jax.eval_shape(
            lambda s, *a: step_lib.update(packed(spec, 16, 1), optimizer, s, *a),
            state,
            tokens,
            mask,
            batch,
        )
