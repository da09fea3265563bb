"""The slot sampler (rollout/slots.py) against the static batch (`generate`): every request's
tokens, mask, log-probs and stop reason, with early stops, several prompt buckets, 1 / 3 / 8 slots,
refilling on and off, on one device and on a mesh; inside the RL step, fused and phased; the
programs it compiles; its errors; and what its programs hold (no [rows, P, vocab] logits, the
weights cast once, outside the decode loop)."""

import functools
import logging
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_fused import SKIP, phased_and_fused

from flowrl_jax import mesh as mesh_lib
from flowrl_jax import testing
from flowrl_jax.config import base_config
from flowrl_jax.models import Model, partition
from flowrl_jax.rollout import sampler as sampler_lib
from flowrl_jax.rollout import slots as slots_lib
from flowrl_jax.rollout.sampler import Sampler, SamplingParams

STOPS = (5, 7)  # with a vocabulary of 32, most rows stop early, at different steps


def model(family="qwen3", seed=0):
    cfg = testing.tiny_config(family, vocab_size=32)
    m = Model.random(cfg, seed)
    params = jax.tree.map(lambda x: x, m.params)
    params["lm_head"]["kernel"] = params["lm_head"]["kernel"] * 4  # confident, varied lengths
    return cfg, params


@functools.cache
def static_sampler():
    """The static batch every case of the next test compares with: its programs compile once."""
    return Sampler(model()[0], prompt_buckets=(8, 16))


def prompts(count, longest, seed=0):
    rng = np.random.default_rng(seed)
    return [list(rng.integers(1, 32, size=rng.integers(1, longest + 1))) for _ in range(count)]


def assert_same_rows(got, want):
    for field in ("prompt_tokens", "prompt_mask", "tokens", "mask", "stop_reason"):
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field), err_msg=field)
    np.testing.assert_allclose(got.logprobs, want.logprobs, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "slots, refill, prefill_rows",
    [  # CI: one slot, refilling two at a time, waves; the other two are -m slow
        (1, True, 1),
        (8, True, 2),
        (3, False, 1),
        pytest.param(3, True, 1, marks=pytest.mark.slow),
        pytest.param(8, False, 1, marks=pytest.mark.slow),
    ],
)
def test_each_request_samples_what_the_static_batch_samples(slots, refill, prefill_rows):
    cfg, params = model()
    sp = SamplingParams(max_new_tokens=12, n=3, temperature=1.0, stop_tokens=STOPS)
    static = static_sampler()
    settings = slots_lib.SlotSettings(slots=slots, refill=refill, prefill_rows=prefill_rows)
    # Decode attention in blocks of 5 slots: the 20- and 28-slot windows take several, the last
    # overlapping the one before (attention.ragged_decode).
    slotted = Sampler(cfg.replace(decode_block=5), prompt_buckets=(8, 16), slots=settings)
    for batch, longest, seed in [(5, 8, 0), (3, 16, 1)]:  # two prompt buckets
        asked = prompts(batch, longest, seed)
        key = jax.random.key(seed + 3)
        want = static(params, asked, key, sp)
        got = slotted(params, asked, key, sp)
        assert_same_rows(got, want)
        lengths = want.mask.sum(1)
        assert lengths.min() < 12 and lengths.max() == 12 and len(set(lengths)) > 3
        assert (want.stop_reason == sampler_lib.STOP_EOS).any()
    # Forced lengths (the benchmarks' length table): each row stops at its own limit or before.
    limits = np.random.default_rng(slots).integers(1, 13, 5 * 3)
    want = static(params, prompts(5, 8), jax.random.key(9), sp, limits=limits)
    got = slotted(params, prompts(5, 8), jax.random.key(9), sp, limits=limits)
    assert_same_rows(got, want)
    assert (want.mask.sum(1) <= limits).all() and (want.mask.sum(1) == limits).any()
    assert slotted.num_programs == 3


@pytest.mark.parametrize("kind", ["pallas_gpu", "pallas_tpu"])
def test_with_a_decode_kernel_each_request_samples_what_the_static_batch_samples(kind):
    """model.decode_attention 'pallas_gpu' / 'pallas_tpu' (the GPU's and TPU's default;
    interpret mode here): keys cached [.., S, Dh], windows of 20 and 28 positions rounded up to
    128, each row's visible run read by the kernel. Four slots refilling two at a time, on a
    mesh of 2 x 2 (rows and KV heads split: each device runs the kernel on its own)."""
    cfg, params = model()
    mesh = mesh_lib.make_mesh({"fsdp": 2, "tensor": 2}, jax.devices()[:4])
    sp = SamplingParams(max_new_tokens=12, n=3, temperature=1.0, stop_tokens=STOPS)
    settings = slots_lib.SlotSettings(slots=4, prefill_rows=2)
    pallas = cfg.replace(decode_attention=kind)
    assert slots_lib.window(pallas, 20) == 128 and slots_lib.window(cfg, 20) == 20
    slotted = Sampler(pallas, mesh=mesh, prompt_buckets=(8, 16), slots=settings)
    placed = jax.device_put(
        params, partition.shardings(partition.rules_for(cfg.family), params, mesh)
    )
    for batch, longest, seed in [(5, 8, 0), (3, 16, 1)]:
        asked = prompts(batch, longest, seed)
        key = jax.random.key(seed + 3)
        assert_same_rows(slotted(placed, asked, key, sp), static_sampler()(params, asked, key, sp))


def test_on_a_mesh_each_device_group_refills_its_own_slots():
    """fsdp=4 x tensor=2: four slot groups of 2 slots, the weights split over tensor."""
    cfg, params = model()
    mesh = mesh_lib.make_mesh({"fsdp": 4, "tensor": 2})
    params = jax.device_put(
        params, partition.shardings(partition.rules_for(cfg.family), params, mesh)
    )
    sp = SamplingParams(max_new_tokens=12, n=3, temperature=1.0, stop_tokens=STOPS)
    asked = prompts(7, 8)
    key = jax.random.key(3)
    want = Sampler(cfg, prompt_buckets=(8,))(jax.device_get(params), asked, key, sp)
    settings = slots_lib.SlotSettings(slots=8)
    slotted = Sampler(cfg.replace(decode_block=5), mesh=mesh, prompt_buckets=(8,), slots=settings)
    got = slotted(params, asked, key, sp)
    assert_same_rows(got, want)


def test_the_fused_step_with_refilling_and_packing_equals_the_phased_static_step(tmp_path):
    """Three RL steps of FlowRL on the default job: phased with the static batch and padded
    rows, fused with 3 refilling slots and packed scoring and update. The same responses,
    parameters and metrics. The sampling log-probs (the loss's old log-probs) are computed over
    other batches and cache layouts on the two sides, equal to float32 rounding (~1e-6, test_each_request_samples_what_the_static_batch_samples):
    compared at the 1e-5 of the sharded runs' comparisons."""
    mesh = mesh_lib.make_mesh({}, jax.devices()[:1])
    # 25-token prompts and up to 16 response tokens: rows of 96 hold two or three sequences.
    packed = {"train.pack_length": 96, "task.max_prompt_len": 32}
    (phased, p_params), (fused, f_params) = phased_and_fused(
        tmp_path, "flowrl", mesh, slots=(0, 3), changes=(None, packed)
    )
    for a, b in zip(phased, fused):
        for k in sorted(k for k in a if not k.startswith(SKIP)):
            np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-5, err_msg=k)
    for k in ("response/length_max", "response/clipped_fraction", "accuracy"):
        assert [h[k] for h in phased] == [h[k] for h in fused], k  # the same responses
    assert len({h["response/length_max"] for h in phased} | {phased[0]["reward/mean"]}) > 1
    for (path, x), y in zip(
        jax.tree_util.tree_leaves_with_path(p_params), jax.tree.leaves(f_params)
    ):
        np.testing.assert_allclose(y, x, rtol=0, atol=1e-5, err_msg=str(path))


def test_the_slots_shrink_in_the_phases_the_schedule_replays():
    """Forced lengths from the benchmarks' long-tail table, 8 slots refilled 2 at a time, two
    shrinking phases: the decode steps of each phase (8, 4, then 2 slots) equal the benchmark's
    replay of the rules in Python, both shrinking phases run, and the row-steps are fewer than
    without them."""
    from benchmarks.sampler import length_table, schedule

    cfg, params = model()
    lengths = length_table(24, 12, seed=2)
    assert lengths.min() < 4 and lengths.max() == 12
    sp = SamplingParams(max_new_tokens=12, n=3, temperature=1.0)
    tokens, mask = testing.left_padded_batch(0, batch=8, length=8, vocab=32, min_len=2)
    run = jax.jit(slots_lib.generate_slots, static_argnums=(0, 1, 2), static_argnames="with_steps")
    steps = {}
    for shrink in (2, 0):
        plan = slots_lib.SlotPlan(8, prefill_rows=2, shrink=shrink)
        args = (params, tokens, mask, np.ones(8, bool), jax.random.key(0), lengths)
        out, steps[shrink] = run(cfg, sp, plan, *args, with_steps=True)
        np.testing.assert_array_equal(np.asarray(out.mask).sum(1), lengths)
        assert list(np.asarray(steps[shrink])) == schedule(lengths, 8, 2, shrink)
    assert (np.asarray(steps[2]) > 0).all()
    row_steps = {k: int(np.dot(slots_lib.phase_sizes(8, k), v)) for k, v in steps.items()}
    assert row_steps[2] < row_steps[0]


def test_twenty_rollouts_compile_a_bounded_logged_number_of_programs(caplog):
    """Prompt lengths over two buckets and batches of 1 or 2 prompts: one program per (batch
    bucket, prompt bucket), each logged once, whatever the response lengths."""
    cfg, params = model()
    sp = SamplingParams(max_new_tokens=8, n=2, temperature=1.0, stop_tokens=STOPS)
    sampler = Sampler(cfg, prompt_buckets=(8, 16), slots=slots_lib.SlotSettings(slots=3))
    rng = np.random.default_rng(0)
    lengths = set()
    with caplog.at_level(logging.INFO, logger="flowrl_jax.rollout.sampler"):
        for i in range(20):
            asked = prompts(int(rng.integers(1, 3)), int(rng.choice([8, 16])), seed=i)
            out = sampler(params, asked, jax.random.key(i), sp)
            lengths |= set(out.mask.sum(1).tolist())
    compiled = [r for r in caplog.records if "sampler: compiled program" in r.getMessage()]
    # batch buckets 1, 2 x prompt buckets 8, 16
    assert sampler.num_programs == len(compiled) <= 4
    assert all("3 slots" in r.getMessage() for r in compiled)
    assert len(lengths) > 4


def sampling_program(cfg, plan, rows=6, prompt=24, new=5):
    sp = SamplingParams(max_new_tokens=new, n=1, stop_tokens=(1,))
    params = jax.eval_shape(lambda: Model.random(cfg, 0).params)
    tokens = jax.ShapeDtypeStruct((rows, prompt), jnp.int32)
    live = jax.ShapeDtypeStruct((rows,), jnp.bool_)
    key = jax.eval_shape(lambda: jax.random.key(0))
    args = (cfg, sp, 2, plan, params, tokens, tokens, live, key)
    return sampler_lib.jit_sample, args


@pytest.mark.parametrize("plan", [None, slots_lib.SlotPlan(3, 1, True, 2)], ids=["static", "slots"])
def test_no_sampling_program_holds_logits_of_every_prompt_position(plan):
    """The prefill's logits are of each prompt's last position only: no array anywhere in the
    compiled program has both the prompt bucket's length and the vocabulary as dimensions (the
    control: the full forward's program has one)."""
    cfg = testing.tiny_config("qwen2", vocab_size=97)
    fn, args = sampling_program(cfg, plan)
    text = fn.lower(*args).compile().as_text()
    shapes = re.findall(r"\[([0-9,]+)\]", text)
    assert any("97" in s.split(",") for s in shapes)  # the vocabulary is there...
    assert not [s for s in shapes if {"24", "97"} <= set(s.split(","))]  # ...never with P
    from flowrl_jax.models.model import forward

    tokens = jnp.zeros((6, 24), jnp.int32)
    control = jax.jit(forward, static_argnums=0).lower(cfg, args[4], tokens, tokens).compile()
    assert [
        s
        for s in re.findall(r"\[([0-9,]+)\]", control.as_text())
        if {"24", "97"} <= set(s.split(","))
    ]


def converts(jaxpr, in_loop=False):
    """(convert_element_type equation, inside a while loop?) for every cast in the program."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "convert_element_type":
            yield eqn, in_loop
        for param in eqn.params.values():
            for sub in param if isinstance(param, list | tuple) else [param]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from converts(inner, in_loop or eqn.primitive.name == "while")


@pytest.mark.parametrize("plan", [None, slots_lib.SlotPlan(3, 1, True, 2)], ids=["static", "slots"])
def test_sampling_casts_the_weights_once_outside_its_loops(plan):
    """fp32 master weights, bf16 compute: the program casts each weight to bf16 once, before
    decoding; no loop body converts a weight (the decode reads the bf16 copy)."""
    cfg = testing.tiny_config("qwen2", dtype="bfloat16", param_dtype="float32")
    fn, args = sampling_program(cfg, plan)
    weights = [tuple(x.shape) for x in jax.tree.leaves(args[4]) if x.ndim >= 2]
    found = list(converts(fn.trace(*args).jaxpr.jaxpr))
    assert any(in_loop for _, in_loop in found)  # the walk does reach the loops
    outside = [
        tuple(e.invars[0].aval.shape)
        for e, in_loop in found
        if not in_loop and e.outvars[0].aval.dtype == jnp.bfloat16
    ]
    assert sorted(s for s in outside if s in weights) == sorted(weights)  # each weight, once
    inside = [tuple(e.invars[0].aval.shape) for e, in_loop in found if in_loop]
    assert not set(inside) & set(weights), set(inside) & set(weights)


def test_decode_weights_are_bf16_and_split_over_tensor_only():
    cfg = testing.tiny_config("qwen2", dtype="bfloat16", param_dtype="float32")
    params = Model.random(cfg, 0).params
    mesh = mesh_lib.make_mesh({"fsdp": 4, "tensor": 2})
    params = jax.device_put(
        params, partition.shardings(partition.rules_for(cfg.family), params, mesh)
    )
    with jax.set_mesh(mesh):
        out = jax.jit(lambda p: sampler_lib.decode_weights(cfg, p))(params)
    q = out["layers"]["attn"]["q_proj"]["kernel"]
    assert q.dtype == jnp.bfloat16
    assert q.sharding.spec == jax.sharding.PartitionSpec(None, None, "tensor")
    np.testing.assert_array_equal(
        np.asarray(q, np.float32),
        np.asarray(params["layers"]["attn"]["q_proj"]["kernel"])
        .astype(jnp.bfloat16)
        .astype(np.float32),
    )


@pytest.mark.parametrize(
    "rollout, message",
    [
        (dict(slots=6), "multiple of the mesh's data-parallel size 4"),
        (dict(kv_cache_gb=1e-7), "cannot hold one request"),
        (dict(slots=4, kv_cache_gb=1.0), "set one"),
    ],
)
def test_slot_settings_that_cannot_sample_are_refused_before_compiling(rollout, message):
    from flowrl_jax.trainer import run

    config = base_config()
    config.rollout.update(rollout)
    mesh = mesh_lib.make_mesh({"fsdp": 4, "tensor": 2})
    with pytest.raises(ValueError, match=message):
        run.check(config, mesh)


def test_slots_for_budget_counts_the_cache_by_hand():
    cfg = testing.tiny_config("qwen2", dtype="bfloat16")
    per_slot = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 100 * 2
    assert slots_lib.slot_bytes(cfg, 100) == per_slot
    assert slots_lib.slots_for_budget(cfg, 10.5 * per_slot / 1e9, 100, groups=4) == 40
