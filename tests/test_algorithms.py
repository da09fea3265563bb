"""The six registered losses against independent float64 numpy references.

Every reference below is written from the conventions (docs/algorithms.md and the algorithm
docstrings), not from `flowrl_jax.algorithms.advantages`: plain loops over groups, rows and
tokens, so a shared helper bug cannot hide on both sides. Inputs are rounded to float32 first so
both sides see the same numbers; ours runs in float32, the reference in float64, compared to 1e-6.

The batch holds: two groups of 4 with distinct rewards, one group of 4 with all-equal rewards, one
group of 1 (G = 1) and one padding row (no response token, in a group of its own), rows shuffled
so groups interleave and the padding row is not last; group ids are sparse, not 0..n-1.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowrl_jax import algorithms

T = 7  # response slots
GROUP = 4
SEEDS = [0, 1, 2]
TOL = dict(rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- inputs


def f32(x):
    """Round to float32 and back: the values both sides compute from."""
    return np.asarray(x, np.float32).astype(np.float64)


def make_inputs(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    ids = rng.choice(1000, size=5, replace=False)  # sparse group ids
    varied = [rng.normal(size=GROUP), rng.normal(size=GROUP)]
    equal = np.full(GROUP, rng.normal())  # not a dyadic value: its mean must still be exact
    single = rng.normal(size=1)
    rewards = np.concatenate(varied + [equal, single, [0.0]])
    group = np.repeat(ids, [GROUP, GROUP, GROUP, 1, 1])
    B = rewards.size
    lengths = rng.integers(1, T + 1, size=B)
    lengths[0] = T  # one full-width row: its last token is the last slot
    lengths[GROUP] = 1  # a one-token row
    lengths[-1] = 0  # the padding row
    perm = rng.permutation(B)
    while perm[-1] == B - 1:  # keep the padding row away from the end
        perm = rng.permutation(B)
    rewards, group, lengths = rewards[perm], group[perm], lengths[perm]
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.float64)

    # Log-probs: old and ref differ from the current policy by ~0.3 nats per token, so some
    # token ratios leave [0.8, 1.2] and some stay inside. Off the mask the arrays hold
    # unrelated (finite) values that every masked quantity must ignore.
    logp = -rng.uniform(0.05, 3.0, size=(B, T))
    old_logp = logp + 0.3 * rng.normal(size=(B, T))
    ref_logp = logp + 0.3 * rng.normal(size=(B, T))
    old_values = rng.normal(size=(B, T))
    values = old_values + 0.3 * rng.normal(size=(B, T))  # some move past the 0.2 value clip
    return {
        "logp": f32(logp),
        "old_logp": f32(old_logp),
        "ref_logp": f32(ref_logp),
        "mask": mask,
        "rewards": f32(rewards),
        "group": group.astype(np.int64),
        "logz": f32(rng.normal(size=B)),
        "values": f32(values),
        "old_values": f32(old_values),
    }


def to_batch(x: dict, **override) -> algorithms.Batch:
    """Our Batch in float32 (group ids int32); `override` replaces fields (e.g. traced arrays)."""
    fields = {k: jnp.asarray(v, jnp.int32 if k == "group" else jnp.float32) for k, v in x.items()}
    return algorithms.Batch(**(fields | override))


def run_ours(name: str, x: dict, cfg):
    alg = algorithms.get(name)
    batch = alg.prepare(to_batch(x), cfg)
    value, metrics = alg.loss(batch, cfg)
    return batch, float(value), {k: float(v) for k, v in metrics.items()}


def config(name: str, **changes):
    cfg = algorithms.default_config()[name]
    for key, val in changes.items():
        assert key in cfg, key  # a misspelt knob would otherwise silently test the default
        cfg[key] = val
    return cfg


# --------------------------------------------------------------------------- numpy references


def np_group_normalize(r, group, eps, scale=True):
    out = np.empty_like(r)
    for g in np.unique(group):
        idx = group == g
        if idx.sum() == 1:
            mean, std = 0.0, 1.0
        else:
            mean, std = r[idx].mean(), r[idx].std(ddof=1)
        out[idx] = (r[idx] - mean) / (std + eps) if scale else r[idx] - mean
    return out


def np_aggregate(per_token, mask, mode):
    if mode == "token-mean":
        return (per_token * mask).sum() / mask.sum()
    rows = [i for i in range(mask.shape[0]) if mask[i].sum() > 0]
    if mode == "seq-mean-token-mean":
        per_seq = [(per_token[i] * mask[i]).sum() / mask[i].sum() for i in rows]
    elif mode == "seq-mean-token-sum":
        per_seq = [(per_token[i] * mask[i]).sum() for i in rows]
    else:
        raise AssertionError(mode)
    return np.mean(per_seq)


def np_masked_mean(x, mask):
    return (x * mask).sum() / mask.sum()


def np_whiten(x, mask):
    vals = x[mask > 0]
    return (x - vals.mean()) / (vals.std(ddof=1) + 1e-8) * mask


def np_ppo_clip(logp, old_logp, adv, eps_low, eps_high):
    """Per-token loss and the 'clip decided' indicator."""
    ratio = np.exp(logp - old_logp)
    unclipped = ratio * adv
    clipped = np.clip(ratio, 1 - eps_low, 1 + eps_high) * adv
    return -np.minimum(unclipped, clipped), clipped < unclipped


def np_k3(logp, ref_logp):
    d = ref_logp - logp
    return np.exp(d) - d - 1


def np_token_rewards(x, kl_coef):
    """r_i on each row's last response token, minus kl_coef·(old − ref) on every token."""
    mask = x["mask"]
    r = -kl_coef * (x["old_logp"] - x["ref_logp"]) * mask
    for i, n in enumerate(mask.sum(1).astype(int)):
        if n > 0:
            r[i, n - 1] += x["rewards"][i]
    return r


def np_gae(rew, values, mask, gamma, lam):
    B, T_ = mask.shape
    adv = np.zeros((B, T_))
    for i in range(B):
        n = int(mask[i].sum())
        a_next = 0.0
        for t in reversed(range(n)):
            v_next = values[i, t + 1] if t + 1 < n else 0.0
            delta = rew[i, t] + gamma * v_next - values[i, t]
            a_next = adv[i, t] = delta + gamma * lam * a_next
    return adv, (adv + values) * mask


def np_returns(rew, mask, gamma):
    out = np.zeros_like(rew)
    for i in range(mask.shape[0]):
        g = 0.0
        for t in reversed(range(int(mask[i].sum()))):
            g = out[i, t] = rew[i, t] + gamma * g
    return out


def np_flowrl(x, cfg):
    """(loss, δ [B], w' [B], scores [B], valid [B], norm [B]) per docs/algorithms.md."""
    mask = x["mask"]
    n = mask.sum(1)
    valid = n > 0
    if cfg.reward_normalization == "group":
        scores = np_group_normalize(x["rewards"], x["group"], cfg.norm_eps)
    else:
        scores = x["rewards"].copy()
    norm = np.where(valid, n, 1.0) if cfg.length_normalize else np.ones_like(n)
    logp_bar = (x["logp"] * mask).sum(1) / norm
    ref_bar = (x["ref_logp"] * mask).sum(1) / norm
    delta = x["logz"] + logp_bar - cfg.beta * scores - ref_bar
    log_ratio = ((x["logp"] - x["old_logp"]) * mask).sum(1)
    w = np.exp(log_ratio)
    if cfg.is_weight == "mean":  # the geometric mean of the token ratios
        w = np.exp(log_ratio / np.maximum(n, 1))
    elif cfg.is_weight == "clip":
        w = np.clip(w, 1 - cfg.is_clip_eps, 1 + cfg.is_clip_eps)
    elif cfg.is_weight == "cap":
        w = np.minimum(w, cfg.is_cap)
    loss = np.mean((w * delta**2)[valid])
    return loss, delta, w, scores, valid, norm


# --------------------------------------------------------------------------- registry


EXPECTED_NAMES = {"flowrl", "grpo", "ppo", "reinforce_pp", "dapo", "gspo"}


def test_registry_names_and_configs():
    assert set(algorithms.names()) == EXPECTED_NAMES
    cfg = algorithms.default_config()
    assert set(cfg.keys()) == EXPECTED_NAMES | {"name"}
    assert cfg.name in EXPECTED_NAMES
    for name in EXPECTED_NAMES:
        assert algorithms.get(name).name == name


def test_unknown_algorithm_lists_known_names():
    with pytest.raises(ValueError, match="nope") as info:
        algorithms.get("nope")
    for name in EXPECTED_NAMES:
        assert name in str(info.value)


def test_unknown_is_weight_rule_raises():
    x = make_inputs(0)
    with pytest.raises(ValueError, match="bogus_rule"):
        run_ours("flowrl", x, config("flowrl", is_weight="bogus_rule"))


def test_mean_is_weight_stays_near_one_on_long_responses():
    """A 400-token response whose every token ratio is exp(-0.05): the token-sum weight is
    exp(-20) ~ 2e-9 (the response all but drops out of the loss), the length-normalised one
    exp(-0.05); a 4-token response gets exp(-0.2) and exp(-0.05)."""
    from flowrl_jax.algorithms import flowrl

    n = jnp.asarray([400.0, 4.0, 0.0])
    log_w = -0.05 * n
    cfg = config("flowrl", is_weight="mean")
    got = np.asarray(flowrl.importance_weight(log_w, n, cfg))
    np.testing.assert_allclose(got, [math.exp(-0.05), math.exp(-0.05), 1.0], rtol=1e-6)
    raw = np.asarray(flowrl.importance_weight(log_w, n, config("flowrl", is_weight="none")))
    np.testing.assert_allclose(raw, [math.exp(-20.0), math.exp(-0.2), 1.0], rtol=1e-6)


def test_unknown_reward_normalization_raises():
    x = make_inputs(0)
    with pytest.raises(ValueError, match="bogus_norm"):
        run_ours("flowrl", x, config("flowrl", reward_normalization="bogus_norm"))


@pytest.mark.parametrize("name", ["grpo", "ppo", "reinforce_pp", "dapo"])
def test_unknown_loss_agg_raises(name):
    x = make_inputs(0)
    with pytest.raises(ValueError, match="bogus_agg"):
        run_ours(name, x, config(name, loss_agg="bogus_agg"))


# --------------------------------------------------------------------------- group normalisation


@pytest.mark.parametrize("seed", SEEDS)
def test_group_scores_equal_group_and_singleton(seed):
    """GRPO's prepared scores: all-equal group -> exactly 0, G = 1 -> the raw reward (mean 0,
    std 1, so r / (1 + eps)), every other row against the numpy reference."""
    x = make_inputs(seed)
    batch, _, _ = run_ours("grpo", x, config("grpo"))
    ours = np.asarray(batch.scores, np.float64)
    np.testing.assert_allclose(ours, np_group_normalize(x["rewards"], x["group"], 1e-6), **TOL)
    counts = {g: (x["group"] == g).sum() for g in x["group"]}
    for i, g in enumerate(x["group"]):
        rows = x["group"] == g
        if counts[g] > 1 and np.all(x["rewards"][rows] == x["rewards"][i]):
            assert ours[i] == 0.0, (i, ours[i])
        if counts[g] == 1:
            np.testing.assert_allclose(ours[i], x["rewards"][i] / (1 + 1e-6), **TOL)


# --------------------------------------------------------------------------- GRPO


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kl_coef", [0.0, 0.04])
@pytest.mark.parametrize("loss_agg", ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum"])
@pytest.mark.parametrize("scale_rewards", [True, False])
def test_grpo_matches_numpy(seed, kl_coef, loss_agg, scale_rewards):
    x = make_inputs(seed)
    cfg = config("grpo", kl_coef=kl_coef, loss_agg=loss_agg, scale_rewards=scale_rewards)
    batch, value, metrics = run_ours("grpo", x, cfg)

    mask = x["mask"]
    adv_seq = np_group_normalize(x["rewards"], x["group"], cfg.norm_eps, scale_rewards)
    adv = adv_seq[:, None] * mask
    per_token, clipped = np_ppo_clip(x["logp"], x["old_logp"], adv, cfg.clip_eps, cfg.clip_eps)
    k3 = np_k3(x["logp"], x["ref_logp"])
    expected = np_aggregate(per_token + kl_coef * k3, mask, loss_agg)

    np.testing.assert_allclose(np.asarray(batch.advantages) * mask, adv, **TOL)
    np.testing.assert_allclose(value, expected, **TOL)
    clip_fraction = np_masked_mean(clipped, mask)
    assert clip_fraction > 0  # the inputs exercise the clip
    np.testing.assert_allclose(metrics["clip_fraction"], clip_fraction, **TOL)
    np.testing.assert_allclose(metrics["kl_ref/k3"], np_masked_mean(k3, mask), **TOL)


# --------------------------------------------------------------------------- DAPO


def test_dapo_overlong_buffer_is_a_fraction_of_the_budget():
    """The default L_cache is 0.2 of L_max (the paper's 4096 of 20480), whatever the budget: short
    responses are not punished. A buffer as long as the budget is refused before anything runs."""
    from flowrl_jax.algorithms import dapo
    from flowrl_jax.config import base_config
    from flowrl_jax.trainer import check_sizes

    cfg = config("dapo")
    assert dapo.buffer_length(cfg, 20480) == 4096 and dapo.buffer_length(cfg, 1024) == 205
    x = make_inputs(0)
    lengths = x["mask"].sum(1)
    batch = algorithms.get("dapo").prepare(to_batch(x), cfg)  # T = 7: L_cache = 1
    want = x["rewards"] - np.clip(lengths - (T - 1), 0, 1)
    np.testing.assert_allclose(np.asarray(batch.shaped_rewards), want, **TOL)
    assert np.any(lengths < T) and np.all(
        np.asarray(batch.shaped_rewards)[lengths < T] == x["rewards"][lengths < T]
    )

    run = base_config()
    run.algorithm.name, run.rollout.max_new_tokens = "dapo", 1024
    run.algorithm.dapo.overlong_buffer = 4096  # the paper's absolute figure on a 1024 budget
    with pytest.raises(ValueError, match=r"overlong_buffer=4096 is not shorter than .*=1024"):
        check_sizes(run, None)
    run.algorithm.dapo.overlong_buffer, run.algorithm.dapo.overlong_buffer_fraction = 0, 1.0
    with pytest.raises(ValueError, match=r"overlong_buffer_fraction=1.0 must be in \(0, 1\)"):
        check_sizes(run, None)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("overlong_penalty", [True, False])
def test_dapo_matches_numpy(seed, overlong_penalty):
    x = make_inputs(seed)
    cfg = config("dapo", overlong_buffer=3, overlong_penalty=overlong_penalty)
    batch, value, metrics = run_ours("dapo", x, cfg)

    mask = x["mask"]
    n = mask.sum(1)
    buf = min(cfg.overlong_buffer, T)
    penalty = -cfg.overlong_penalty_factor * np.clip((n - (T - buf)) / buf, 0, 1)
    if overlong_penalty:
        assert np.any(penalty < 0) and np.any((penalty < 0) & (penalty > -1))  # ramp is hit
    rewards = x["rewards"] + (penalty if overlong_penalty else 0.0)
    adv = np_group_normalize(rewards, x["group"], cfg.norm_eps)[:, None] * mask
    per_token, clipped = np_ppo_clip(x["logp"], x["old_logp"], adv, 0.2, 0.28)
    expected = np_aggregate(per_token, mask, "token-mean")

    np.testing.assert_allclose(np.asarray(batch.shaped_rewards), rewards, **TOL)
    np.testing.assert_allclose(np.asarray(batch.advantages) * mask, adv, **TOL)
    np.testing.assert_allclose(value, expected, **TOL)
    np.testing.assert_allclose(metrics["clip_fraction"], np_masked_mean(clipped, mask), **TOL)


# --------------------------------------------------------------------------- GSPO


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("eps", [None, (0.1, 0.1), (0.05, 0.15)])
def test_gspo_matches_numpy(seed, eps):
    x = make_inputs(seed)
    cfg = (
        config("gspo") if eps is None else config("gspo", clip_eps_low=eps[0], clip_eps_high=eps[1])
    )
    batch, value, metrics = run_ours("gspo", x, cfg)

    mask = x["mask"]
    n = mask.sum(1)
    valid = n > 0
    s = np.exp(((x["logp"] - x["old_logp"]) * mask).sum(1) / np.maximum(n, 1))
    adv = np_group_normalize(x["rewards"], x["group"], cfg.norm_eps)
    unclipped = s * adv
    clipped = np.clip(s, 1 - cfg.clip_eps_low, 1 + cfg.clip_eps_high) * adv
    expected = np.mean(-np.minimum(unclipped, clipped)[valid])
    clip_fraction = np.mean((clipped < unclipped)[valid])

    assert 0 < clip_fraction < 1  # both branches of the min are taken
    np.testing.assert_allclose(value, expected, **TOL)
    np.testing.assert_allclose(metrics["gspo/seq_clip_fraction"], clip_fraction, **TOL)
    np.testing.assert_allclose(metrics["gspo/seq_ratio_mean"], np.mean(s[valid]), **TOL)


# --------------------------------------------------------------------------- PPO


PPO_CASES = {
    "default": {},
    "discounted_kl": dict(gamma=0.9, lam=0.8, kl_coef=0.05),
    "raw_advantages": dict(gamma=0.9, lam=0.8, whiten_advantages=False, value_clip=0.1),
}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case", list(PPO_CASES))
def test_ppo_matches_numpy(seed, case):
    x = make_inputs(seed)
    cfg = config("ppo", **PPO_CASES[case])
    batch, value, metrics = run_ours("ppo", x, cfg)

    mask = x["mask"]
    rew = np_token_rewards(x, cfg.kl_coef)
    adv, returns = np_gae(rew, x["old_values"], mask, cfg.gamma, cfg.lam)
    if cfg.whiten_advantages:
        adv = np_whiten(adv, mask)
    per_token, clipped = np_ppo_clip(x["logp"], x["old_logp"], adv, cfg.clip_eps, cfg.clip_eps)
    policy = np_aggregate(per_token, mask, "token-mean")
    v, v_old = x["values"], x["old_values"]
    v_clipped = v_old + np.clip(v - v_old, -cfg.value_clip, cfg.value_clip)
    vf_token = 0.5 * np.maximum((v - returns) ** 2, (v_clipped - returns) ** 2)
    vf = np_aggregate(vf_token, mask, "token-mean")

    np.testing.assert_allclose(np.asarray(batch.advantages) * mask, adv, **TOL)
    np.testing.assert_allclose(np.asarray(batch.returns) * mask, returns, **TOL)
    np.testing.assert_allclose(metrics["ppo/policy_loss"], policy, **TOL)
    np.testing.assert_allclose(metrics["ppo/value_loss"], vf, **TOL)
    np.testing.assert_allclose(value, policy + cfg.vf_coef * vf, **TOL)
    np.testing.assert_allclose(metrics["clip_fraction"], np_masked_mean(clipped, mask), **TOL)
    chose = (v_clipped - returns) ** 2 > (v - returns) ** 2
    value_clip_fraction = np_masked_mean(chose & (np.abs(v - v_old) > cfg.value_clip), mask)
    assert value_clip_fraction > 0  # the inputs exercise the value clip
    np.testing.assert_allclose(metrics["ppo/value_clip_fraction"], value_clip_fraction, **TOL)


# --------------------------------------------------------------------------- REINFORCE++


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("changes", [{}, dict(gamma=0.9, kl_coef=0.1), dict(kl_coef=0.0)])
def test_reinforce_pp_matches_numpy(seed, changes):
    x = make_inputs(seed)
    cfg = config("reinforce_pp", **changes)
    batch, value, metrics = run_ours("reinforce_pp", x, cfg)

    mask = x["mask"]
    returns = np_returns(np_token_rewards(x, cfg.kl_coef), mask, cfg.gamma)
    adv = np_whiten(returns, mask)
    per_token, clipped = np_ppo_clip(x["logp"], x["old_logp"], adv, cfg.clip_eps, cfg.clip_eps)

    np.testing.assert_allclose(np.asarray(batch.advantages) * mask, adv, **TOL)
    np.testing.assert_allclose(value, np_aggregate(per_token, mask, "token-mean"), **TOL)
    np.testing.assert_allclose(metrics["clip_fraction"], np_masked_mean(clipped, mask), **TOL)


# --------------------------------------------------------------------------- FlowRL


def flowrl_config(is_weight, length_normalize, reward_normalization):
    # is_cap = 1.5 (not the default 10) so the cap binds on some rows of these small inputs.
    return config(
        "flowrl",
        is_weight=is_weight,
        length_normalize=length_normalize,
        reward_normalization=reward_normalization,
        is_cap=1.5,
    )


FLOWRL_GRID = pytest.mark.parametrize(
    "is_weight,length_normalize,reward_normalization",
    [
        (w, ln, rn)
        for w in ["clip", "cap", "none", "mean"]
        for ln in [True, False]
        for rn in ["group", "none"]
    ],
)


@pytest.mark.parametrize("seed", SEEDS)
@FLOWRL_GRID
def test_flowrl_matches_numpy(seed, is_weight, length_normalize, reward_normalization):
    x = make_inputs(seed)
    cfg = flowrl_config(is_weight, length_normalize, reward_normalization)
    batch, value, metrics = run_ours("flowrl", x, cfg)

    expected, delta, w, scores, valid, norm = np_flowrl(x, cfg)
    raw_w = np.exp(((x["logp"] - x["old_logp"]) * x["mask"]).sum(1))
    if is_weight != "none":
        assert np.any(w[valid] != raw_w[valid])  # the weight rule binds somewhere

    np.testing.assert_allclose(np.asarray(batch.scores), scores, **TOL)
    np.testing.assert_allclose(value, expected, **TOL)
    logp_bar = (x["logp"] * x["mask"]).sum(1) / norm
    ref_bar = (x["ref_logp"] * x["mask"]).sum(1) / norm
    logz_opt = np.mean((cfg.beta * scores - logp_bar + ref_bar)[valid])
    np.testing.assert_allclose(metrics["flowrl/logz_optimal"], logz_opt, **TOL)
    np.testing.assert_allclose(metrics["flowrl/delta_mean"], np.mean(delta[valid]), **TOL)
    np.testing.assert_allclose(metrics["flowrl/is_weight_mean"], np.mean(w[valid]), **TOL)
    np.testing.assert_allclose(metrics["flowrl/logz"], np.mean(x["logz"][valid]), **TOL)


@pytest.mark.parametrize("seed", SEEDS)
@FLOWRL_GRID
def test_flowrl_gradients_match_analytic(seed, is_weight, length_normalize, reward_normalization):
    """jax.grad through prepare + loss w.r.t. log Z and the token log-probs equals
    dL/dlogz_i = 2 w'_i δ_i / N and dL/dlogp_it = 2 w'_i δ_i m_it / ℓ_i / N (ℓ = |y| or 1): w'
    carries no gradient, padding rows and padding slots get none."""
    x = make_inputs(seed)
    cfg = flowrl_config(is_weight, length_normalize, reward_normalization)
    alg = algorithms.get("flowrl")

    def loss_of(logz, logp):
        batch = alg.prepare(to_batch(x, logz=logz, logp=logp), cfg)
        return alg.loss(batch, cfg)[0]

    g_logz, g_logp = jax.grad(loss_of, argnums=(0, 1))(
        jnp.asarray(x["logz"], jnp.float32), jnp.asarray(x["logp"], jnp.float32)
    )

    _, delta, w, _, valid, norm = np_flowrl(x, cfg)
    N = valid.sum()
    expected_logz = np.where(valid, 2 * w * delta / N, 0.0)
    expected_logp = expected_logz[:, None] * x["mask"] / norm[:, None]
    np.testing.assert_allclose(np.asarray(g_logz), expected_logz, **TOL)
    np.testing.assert_allclose(np.asarray(g_logp), expected_logp, **TOL)
