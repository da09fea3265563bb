"""The train step. One config key switches the algorithm: a training step of the tiny model for
each of the six, through the main job's own `train`, with no other change; sizes that cannot work
are refused before anything compiles. The compiled update: gradient accumulation over micro-batches
equals one pass (gradient, loss, metrics) for every algorithm and aggregation; the learning-rate
schedules against numpy; explicit shardings (fsdp=4, tensor=2) equal one device."""

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from flowrl_jax import algorithms, testing
from flowrl_jax import mesh as mesh_lib
from flowrl_jax.algorithms import heads
from flowrl_jax.config import base_config
from flowrl_jax.models import Model, partition
from flowrl_jax.rollout import token_logprobs
from flowrl_jax.trainer import check_sizes
from flowrl_jax.trainer import step as step_lib
from flowrl_jax.trainer.run import train

# What each algorithm must log beside the shared diagnostics.
OWN_METRICS = {
    "flowrl": ["flowrl/logz", "flowrl/logz_optimal", "flowrl/delta_mean", "kl_ref/k3"],
    "grpo": ["ratio/mean", "clip_fraction", "advantage/std"],
    "ppo": ["ppo/value_loss", "ppo/value_clip_fraction", "clip_fraction"],
    "reinforce_pp": ["kl_ref/k3", "clip_fraction", "advantage/std"],
    "dapo": ["clip_fraction", "advantage/std"],
    "gspo": ["gspo/seq_ratio_mean", "gspo/seq_clip_fraction"],
}


def _config(tmp_path, name):
    config = base_config()
    config.workdir = str(tmp_path)
    config.algorithm.name = name
    config.train.steps = 1
    config.rollout.max_new_tokens = 8
    return config


def test_every_algorithm_is_registered():
    assert set(algorithms.names()) == set(OWN_METRICS)


# CI steps the three whose steps differ (a log-Z head, a value head, a reference model); the
# other three losses are checked against references in CI (tests/test_algorithms.py).
CI_SWITCHES = ("flowrl", "grpo", "ppo")


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=[] if n in CI_SWITCHES else [pytest.mark.slow])
        for n in sorted(OWN_METRICS)
    ],
)
def test_switching_the_algorithm_runs_a_training_step(tmp_path, name):
    config = _config(tmp_path, name)
    mesh = mesh_lib.make_mesh(dict(config.mesh))
    with jax.set_mesh(mesh):
        [metrics] = train(config, mesh).history
    assert np.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0, metrics
    for key in OWN_METRICS[name] + ["reward/mean", "entropy", "loss"]:
        assert key in metrics, (key, sorted(metrics))


def test_unknown_algorithm_lists_the_known_ones(tmp_path):
    config = _config(tmp_path, "grpoo")
    mesh = mesh_lib.make_mesh(dict(config.mesh))
    with pytest.raises(ValueError) as err:
        check_sizes(config, mesh)
    for name in algorithms.names():
        assert name in str(err.value)


def test_group_that_does_not_divide_the_minibatch_is_refused_before_compiling(tmp_path):
    config = _config(tmp_path, "grpo")
    config.rollout.n = 4
    config.train.minibatch_size = 6  # one and a half groups
    mesh = mesh_lib.make_mesh(dict(config.mesh))
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"minibatch_size=6 is not a multiple of .*rollout.n=4"):
        with jax.set_mesh(mesh):
            train(config, mesh)
    assert time.perf_counter() - t0 < 1.0  # refused before the model is built or compiled


def test_minibatch_that_does_not_divide_the_rollout_batch_is_refused(tmp_path):
    config = _config(tmp_path, "flowrl")
    config.train.prompts_per_step = 3
    config.rollout.n = 4
    config.train.minibatch_size = 8
    mesh = mesh_lib.make_mesh(dict(config.mesh))
    with pytest.raises(ValueError, match=r"does not divide the rollout batch"):
        check_sizes(config, mesh)


# --- the compiled update: gradient accumulation, schedules, explicit shardings ---

P_LEN, N_LEN, ROWS, GROUP = 8, 12, 8, 4  # prompt and response slots; 2 prompts x 4 samples


def _setup(name, micro_batches=1, family="qwen3", changes=None, head_lr=0.0):
    """A tiny model, its train state and a prepared mini-batch as the loop hands it to `update`:
    left-padded prompts, right-padded responses of uneven lengths (row 3 has none), old and
    reference log-probs near the current ones (so some ratios clip, and values for PPO), varied
    rewards."""
    config = base_config()
    algo_cfg = config.algorithm[name]
    for key, value in (changes or {}).items():
        algo_cfg[key] = value
    config.heads.logz.learning_rate = head_lr
    cfg = testing.tiny_config(family)
    params = Model.random(cfg, seed=1).params
    spec = step_lib.StepSpec(
        cfg, name, algo_cfg, config.heads, P_LEN, 0.9, chunk=8, micro_batches=micro_batches
    )
    optimizer = step_lib.make_optimizer(config.optimizer, config.heads)
    state = step_lib.init_state(spec, params, optimizer, jax.random.key(7))
    rng = np.random.default_rng(5)
    prompt, prompt_mask = testing.left_padded_batch(3, ROWS, P_LEN, cfg.vocab_size, min_len=3)
    lengths = np.array([12, 5, 9, 0, 1, 12, 7, 3])
    response_mask = (np.arange(N_LEN)[None] < lengths[:, None]).astype(np.int32)
    response = rng.integers(3, cfg.vocab_size, (ROWS, N_LEN)) * response_mask
    tokens = jnp.asarray(np.concatenate([prompt, response], 1), jnp.int32)
    mask = jnp.asarray(np.concatenate([prompt_mask, response_mask], 1), jnp.int32)
    ref_params = jax.tree.map(lambda x: x * 1.01, params)
    ref, old_values = step_lib.score(spec, state.params, ref_params, tokens, mask)
    if old_values is not None:  # rollout-time values off the current ones, so some clip (ε_v 0.2)
        old_values = old_values + jnp.asarray(rng.normal(0, 0.3, (ROWS, N_LEN)), jnp.float32)
    now = token_logprobs(cfg, params, tokens, mask, spec.temperature, spec.chunk)[:, P_LEN:]
    batch = algorithms.Batch(
        logp=None,
        old_logp=now + jnp.asarray(rng.normal(0, 0.15, (ROWS, N_LEN)), jnp.float32),
        mask=jnp.asarray(response_mask, jnp.float32),
        rewards=jnp.asarray([1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0]),
        group=jnp.repeat(jnp.arange(ROWS // GROUP), GROUP).astype(jnp.int32),
        ref_logp=ref,
        old_values=old_values,
    )
    batch = step_lib.prepare(spec, batch)
    return spec, optimizer, state, tokens, mask, batch


def _one_pass(spec, state, tokens, mask, batch):
    """The reference: jax.grad of the algorithm's loss over the whole mini-batch at once (no
    micro-batches, no weights, no scan) -> (grads, loss, metrics)."""
    rng = step_lib.phase_key(state.rng, state.step, step_lib.UPDATE)  # update's key
    rows = jnp.arange(tokens.shape[0])

    def loss(params):
        outputs = step_lib.policy_outputs(spec, params, tokens, mask, rows, rng)
        return spec.alg.loss(batch._replace(**outputs), spec.algo_cfg)

    (value, metrics), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(state.params)
    return grads, value, metrics


def _gradient_of_update(spec, state, tokens, mask, batch):
    """`update` with an optimiser that leaves the parameters alone and keeps the gradient it is
    given as its state: the gradient `update` computed, unrounded -> (gradient, metrics)."""
    keep = optax.GradientTransformation(
        lambda params: params,
        lambda grads, _, params=None: (jax.tree.map(jnp.zeros_like, grads), grads),
    )
    state = state._replace(opt_state=keep.init(state.params))
    new, metrics = jax.jit(functools.partial(step_lib.update, spec, keep))(
        state, tokens, mask, batch
    )
    return new.opt_state, metrics


# fp32 agreement of two evaluations of the same function in a different order (rows batched
# differently, sums split): each gradient leaf to 1e-5 of its largest entry, as the long-context
# tests compare gradients; metrics to 1e-5 relative. (The same reference run eagerly and jitted
# already differs by 1.4e-6 of the leaf maximum for FlowRL, whose loss is ~175.)
GRAD_TOL, METRIC_RTOL, METRIC_ATOL = 1e-5, 1e-5, 1e-7
# Metrics decided by rounding: PPO counts a token as value-clipped when (V_old + clip(V - V_old) -
# R)² > (V - R)², and for an unclipped token V_old + (V - V_old) differs from V in the last bit, so
# the comparison is a coin toss there (a fix for algorithms/ppo.py: test |V - V_old| > ε_v).
ROUNDING_DECIDED = {"ppo/value_clip_fraction"}


def _grad_error(got, want) -> float:
    """The largest |got - want| of any leaf, relative to that leaf's largest |want|."""
    worst = 0.0
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        scale = float(jnp.max(jnp.abs(a))) or 1.0
        worst = max(worst, float(jnp.max(jnp.abs(b - a))) / scale)
    return worst


ACCUMULATION_CASES = [
    ("flowrl", {}),
    ("grpo", {}),  # seq-mean-token-mean
    ("grpo", {"loss_agg": "token-mean", "kl_coef": 0.04}),
    ("grpo", {"loss_agg": "seq-mean-token-sum"}),
    ("ppo", {}),  # token-mean, policy and value losses
    ("ppo", {"loss_agg": "seq-mean-token-mean"}),
    ("reinforce_pp", {}),
    ("reinforce_pp", {"loss_agg": "seq-mean-token-mean"}),
    ("dapo", {}),
    ("dapo", {"loss_agg": "seq-mean-token-mean"}),
    ("gspo", {}),
]
# The cases CI runs (the rest are -m slow): FlowRL, and PPO's token mean with its value loss.
CI_ACCUMULATION_CASES = (0,)  # FlowRL; the rest, PPO's value loss among them, -m slow
SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    "name, changes",
    [
        pytest.param(n, c, id=f"{n}-{c}", marks=[] if i in CI_ACCUMULATION_CASES else [SLOW])
        for i, (n, c) in enumerate(ACCUMULATION_CASES)
    ],
)
def test_micro_batches_give_the_gradient_and_metrics_of_one_pass(name, changes):
    """1 and 4 micro-batches against jax.grad of the loss over the whole mini-batch: the same
    gradient and the same loss and metrics, in fp32. FlowRL runs with its log-Z dropout on: each
    row's dropout mask must not depend on its micro-batch."""
    spec, _, state, tokens, mask, batch = _setup(name, changes=changes)
    grads, loss, metrics = _one_pass(spec, state, tokens, mask, batch)
    for k in (1, 4):
        spec_k = dataclasses.replace(spec, micro_batches=k)
        got_grads, got = _gradient_of_update(spec_k, state, tokens, mask, batch)
        assert _grad_error(got_grads, grads) < GRAD_TOL, f"micro_batches={k}"
        assert set(got) == set(metrics) | {"loss", "grad_norm"}
        want = metrics | {"loss": loss, "grad_norm": optax.tree.norm(grads)}
        for key, value in want.items():
            if key in ROUNDING_DECIDED:
                continue
            np.testing.assert_allclose(
                float(got[key]),
                float(value),
                rtol=METRIC_RTOL,
                atol=METRIC_ATOL,
                err_msg=f"{key} with micro_batches={k}",
            )


def test_an_unweighted_micro_batch_mean_would_be_caught(monkeypatch):
    """The check above can fail: weighting every micro-batch equally (the mean of the micro-batch
    token-means, not the mini-batch's token-mean) gives DAPO a gradient off by far more than the
    tolerance. (A loss that reports its mean as its total, with a count of 1.)"""
    spec, _, state, tokens, mask, batch = _setup("dapo")
    grads, _, _ = _one_pass(spec, state, tokens, mask, batch)
    dapo = algorithms.get("dapo")

    def mean_as_total(b, cfg):
        total, count, metrics = dapo.loss_terms(b, cfg)
        return total / jnp.maximum(count, 1.0), jnp.float32(1.0), metrics

    unweighted = dataclasses.replace(dapo, loss_terms=mean_as_total)
    monkeypatch.setattr(step_lib.StepSpec, "alg", property(lambda self: unweighted))
    spec = dataclasses.replace(spec, micro_batches=2)
    got, _ = _gradient_of_update(spec, state, tokens, mask, batch)
    assert _grad_error(got, grads) > 1000 * GRAD_TOL


def test_a_new_algorithm_with_its_own_reduction_accumulates_exactly(monkeypatch):
    """A new algorithm is one definition and a register line: here a throwaway with a reduction no
    built-in uses (each response weighted by its length: Σ_i |y_i| Σ_t ℓ_it over Σ_i |y_i|²).
    The step, unchanged, gives it the gradient of one pass with 4 micro-batches."""
    from flowrl_jax.algorithms import advantages as A
    from flowrl_jax.algorithms import grpo, registry

    def loss_terms(b, cfg):
        per_token = -jnp.exp(b.logp - b.old_logp) * b.advantages
        n = A.lengths(b.mask)
        total = jnp.sum(n * A.seq_sum(per_token, b.mask))
        return total, jnp.sum(n**2), A.policy_metrics(b, None, None)

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    algorithms.register(
        algorithms.Algorithm("length_weighted", grpo.default_config, grpo.prepare, loss_terms)
    )
    spec, _, state, tokens, mask, batch = _setup("grpo")
    spec = dataclasses.replace(spec, algorithm="length_weighted")
    grads, loss, _ = _one_pass(spec, state, tokens, mask, batch)
    n = np.asarray(batch.mask).sum(1)
    assert len(set(n[n > 0])) > 2  # uneven lengths: a per-micro-batch mean would differ
    for k in (4,):
        got_grads, got = _gradient_of_update(
            dataclasses.replace(spec, micro_batches=k), state, tokens, mask, batch
        )
        assert _grad_error(got_grads, grads) < GRAD_TOL, f"micro_batches={k}"
        np.testing.assert_allclose(float(got["loss"]), float(loss), rtol=METRIC_RTOL)


def test_micro_batches_that_do_not_divide_are_refused():
    spec, optimizer, state, tokens, mask, batch = _setup("grpo", micro_batches=3)
    message = (
        r"train.micro_batches=3 does not divide the mini-batch of 8 rows \(train.minibatch_size\)"
    )
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(
            functools.partial(step_lib.update, spec, optimizer), state, tokens, mask, batch
        )
    with pytest.raises(ValueError, match=r"train.micro_batches=0 must be >= 1"):
        step_lib.check_micro_batches(8, 0)
    # 16 rows in 4 micro-batches of 4: each cannot spread over the 8 data-parallel devices.
    mesh = mesh_lib.make_mesh({"fsdp": 8})
    with pytest.raises(ValueError, match=r"train.minibatch_size / train.micro_batches=4 is not"):
        step_lib.check_micro_batches(16, 4, mesh)
    assert step_lib.check_micro_batches(16, 2, mesh) == 8


# Schedules: the rate at optimiser step s, by hand.
def np_schedule(s, peak, warmup, schedule="constant", total=None, min_ratio=0.0):
    s = np.asarray(s, np.float64)
    warm = peak * (s + 1) / warmup  # the first step at peak / warmup, not 0
    if schedule == "constant":
        after = np.full_like(s, peak)
    else:
        progress = np.clip((s - warmup) / (total - warmup), 0.0, 1.0)
        end = peak * min_ratio
        after = end + (peak - end) * 0.5 * (1.0 + np.cos(np.pi * progress))
    return np.where(s < warmup, warm, after)


@pytest.mark.parametrize(
    "schedule, total, min_ratio",
    [("constant", None, 0.0), ("cosine", 40, 0.0), ("cosine", 25, 0.1)],
)
def test_learning_rate_schedules_match_numpy(schedule, total, min_ratio):
    cfg = step_lib.default_config()
    cfg.learning_rate, cfg.warmup_steps = 3e-4, 10
    cfg.schedule, cfg.min_lr_ratio = schedule, min_ratio
    fn = step_lib.learning_rate_schedule(cfg, cfg.learning_rate, total)
    steps = np.arange(60)
    want = np_schedule(steps, 3e-4, 10, schedule, total, min_ratio)
    # fp32 against float64: 1e-6 of the peak (the cosine's tail cancels in 1 + cos).
    got = [float(fn(s)) for s in steps]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * cfg.learning_rate)
    assert got[0] == pytest.approx(3e-5) and got[9] == pytest.approx(3e-4)  # 1/10, then the peak


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_the_optimizer_steps_at_the_scheduled_rate(schedule):
    """Through make_optimizer: with a constant gradient, no decay and a loose clip, Adam's step is
    -lr_s · g / (|g| + ε) per weight, so each update reads back the rate (the policy's and, at its
    own peak, the log-Z head's)."""
    config = base_config()
    cfg, heads_cfg = config.optimizer, config.heads
    cfg.learning_rate, cfg.warmup_steps, cfg.weight_decay, cfg.grad_clip = 2e-3, 4, 0.0, 1e6
    cfg.schedule, cfg.min_lr_ratio = schedule, 0.2
    heads_cfg.logz.learning_rate = 5e-3
    total = 12
    optimizer = step_lib.make_optimizer(cfg, heads_cfg, total_steps=total)
    params = {"policy": jnp.zeros(3), "logz_head": jnp.zeros(2)}
    grads = {"policy": jnp.full(3, 0.5), "logz_head": jnp.full(2, 0.5)}
    state = optimizer.init(params)
    for s in range(total + 3):
        updates, state = optimizer.update(grads, state, params)
        for key, peak in (("policy", 2e-3), ("logz_head", 5e-3)):
            want = np_schedule(s, peak, 4, schedule, total, 0.2) * 0.5 / (0.5 + 1e-8)
            # rtol: optax's bias correction 1 - 0.999^t cancels in fp32 (t = 1: 6e-5 relative
            # in v, 3e-5 in its square root).
            np.testing.assert_allclose(np.asarray(updates[key]), -want, rtol=1e-4, atol=1e-12)


def test_a_run_inside_the_warm_up_runs_the_ramp(caplog):
    """A smoke run shorter than the warm-up (train.steps=2 on the default job) is legal: every
    step takes the ramp's rate, and the log says the cosine never started."""
    cfg = step_lib.default_config()
    cfg.schedule, cfg.warmup_steps = "cosine", 10
    rate = step_lib.learning_rate_schedule(cfg, 1e-3, total_steps=4)
    got = [float(rate(s)) for s in range(4)]
    np.testing.assert_allclose(got, np_schedule(np.arange(4), 1e-3, 10), rtol=1e-6)
    assert "the cosine never starts" in caplog.text


def test_bad_schedules_are_refused():
    cfg = step_lib.default_config()
    heads_cfg = base_config().heads
    cfg.schedule = "cosine"
    with pytest.raises(ValueError, match=r"optimizer.schedule='cosine' .* needs total_steps"):
        step_lib.make_optimizer(cfg, heads_cfg)
    cfg.min_lr_ratio = 1.5
    with pytest.raises(ValueError, match=r"optimizer.min_lr_ratio=1.5 must be in \[0, 1\]"):
        step_lib.make_optimizer(cfg, heads_cfg, total_steps=100)
    cfg.schedule = "linear"
    with pytest.raises(ValueError, match=r"optimizer.schedule='linear'; known: constant, cosine"):
        step_lib.make_optimizer(cfg, heads_cfg)


def test_updates_runs_each_epoch_over_each_minibatch_in_order():
    """`updates` (the phased loop's and the fused step's one update program) with two mini-batches
    of 4 rows and two epochs equals `update` called four times on the consecutive row slices, in
    epoch order; its metrics are the mean of the four steps'."""
    spec, optimizer, state, tokens, mask, batch = _setup("flowrl")
    config = base_config()
    config.optimizer.learning_rate, config.optimizer.warmup_steps = 1e-3, 1
    optimizer = step_lib.make_optimizer(config.optimizer, config.heads)
    state = state._replace(opt_state=optimizer.init(state.params))
    single = jax.jit(functools.partial(step_lib.update, spec, optimizer))
    want, metrics = state, []
    for _ in range(2):
        for rows in (slice(0, 4), slice(4, 8)):
            part = jax.tree.map(lambda x, rows=rows: x[rows], batch)
            want, m = single(want, tokens[rows], mask[rows], part)
            metrics.append(m)
    got, got_m = jax.jit(functools.partial(step_lib.updates, spec, optimizer, 4, 2))(
        state, tokens, mask, batch
    )
    assert int(got.step) == int(state.step) + 4
    for a, b in zip(jax.tree.leaves(want.params), jax.tree.leaves(got.params), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=1e-6)
    for key in got_m:
        if key in ROUNDING_DECIDED:
            continue
        mean = np.mean([float(m[key]) for m in metrics])
        np.testing.assert_allclose(
            float(got_m[key]), mean, rtol=METRIC_RTOL, atol=METRIC_ATOL, err_msg=key
        )


@pytest.mark.parametrize(
    "name, head_lr",
    [
        # -m slow for CI's time: CI runs the packed update on this mesh (tests/test_packing.py)
        # and the strided micro-batches on it through the trainer (tests/test_trainer_sharding.py)
        pytest.param("flowrl", 0.0, id="flowrl-0.0", marks=SLOW),
        pytest.param("flowrl", 1e-3, id="flowrl-0.001", marks=SLOW),
        pytest.param("ppo", 0.0, id="ppo-0.0", marks=SLOW),
    ],
)
def test_sharded_update_equals_single_device(name, head_lr):
    """jit_updates on 8 devices (fsdp=4, tensor=2), 2 micro-batches, against `update` jitted on one
    device: the same state after two steps (to 1e-5), metrics too, and every output array sharded
    as its input was."""
    spec, optimizer, state, tokens, mask, batch = _setup(
        name, micro_batches=2, family="llama", head_lr=head_lr
    )
    adamw_lr = 1e-3  # large enough that two steps move the weights visibly
    config = base_config()
    config.optimizer.learning_rate, config.optimizer.warmup_steps = adamw_lr, 1
    config.heads.logz.learning_rate = head_lr
    optimizer = step_lib.make_optimizer(config.optimizer, config.heads)
    state = state._replace(opt_state=optimizer.init(state.params))

    single = jax.jit(functools.partial(step_lib.update, spec, optimizer))
    want, want_metrics = state, []
    for _ in range(2):
        want, m = single(want, tokens, mask, batch)
        want_metrics.append(m)

    mesh = mesh_lib.make_mesh({"fsdp": 4, "tensor": 2})
    sharding = step_lib.state_shardings(mesh, state, spec.model.family)
    update = step_lib.jit_updates(spec, optimizer, len(tokens), 1, mesh, sharding)
    rows = mesh_lib.batch_sharding(mesh, 1)
    with jax.set_mesh(mesh):
        got = jax.device_put(state, sharding)
        inputs = jax.device_put((tokens, mask, batch), rows)
        for i in range(2):
            got, m = update(got, *inputs)
            for key, value in want_metrics[i].items():
                if key in ROUNDING_DECIDED:
                    continue
                np.testing.assert_allclose(
                    float(m[key]), float(value), rtol=METRIC_RTOL, atol=METRIC_ATOL, err_msg=key
                )

    for (path, a), b, s in zip(
        jax.tree_util.tree_leaves_with_path(want),
        jax.tree.leaves(got),
        jax.tree.leaves(sharding),
        strict=True,
    ):
        where = jax.tree_util.keystr(path)
        assert b.sharding == s, where
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5, rtol=0, err_msg=where)
    # Adam's moments are laid out as their parameters (under multi_transform too).
    moments = [
        (partition.path_str(p), s.spec)
        for p, s in jax.tree_util.tree_leaves_with_path(sharding.opt_state)
        if partition.path_str(p).endswith("policy/embed/embedding")
    ]
    assert len(moments) == 2 and all(spec == P("tensor", "fsdp") for _, spec in moments), moments
    # The weights really are split: the embedding over all 8 devices, the head's [D, D] rows too.
    emb = got.params["policy"]["embed"]["embedding"]
    assert emb.addressable_shards[0].data.size == emb.size // 8
    if name == "flowrl":
        kernel = got.params["logz_head"]["Dense_0"]["kernel"]
        assert kernel.addressable_shards[0].data.shape == (kernel.shape[0] // 8, kernel.shape[1])


def test_every_head_parameter_has_a_rule_and_a_miss_is_an_error():
    config = base_config()
    params = {"policy": {}} | heads.init(jax.random.key(0), 64, config.heads, True, True)
    mesh = mesh_lib.make_mesh({"fsdp": 4, "tensor": 2})
    shardings = step_lib.param_shardings(mesh, params, "qwen2")
    specs = {
        partition.path_str(p): s.spec for p, s in jax.tree_util.tree_leaves_with_path(shardings)
    }
    assert specs["logz_head/Dense_0/kernel"] == P(("fsdp", "tensor"), None)
    assert specs["logz_head/LayerNorm_0/scale"] == P(None)
    assert specs["value_head/Dense_0/kernel"] == P(None, None)
    params["logz_head"]["Extra_0"] = {"kernel": np.zeros((64, 64))}
    with pytest.raises(ValueError, match="no partition rule matches parameter 'logz_head/Extra_0"):
        step_lib.param_shardings(mesh, params, "qwen2")
