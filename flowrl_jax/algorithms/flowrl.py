"""FlowRL (arXiv 2509.15207): reward-distribution matching through a trajectory-balance residual.

    δ_i  = log Z(x) + (1/|y_i|) Σ_t log π_θ(y_i,t) − β·r̂_i − (1/|y_i|) Σ_t log π_ref(y_i,t)
    w_i  = stop_gradient(exp(Σ_t [log π_θ(y_i,t) − log π_old(y_i,t)]))     token SUM
           (is_weight 'mean': exp of the token MEAN, (1/|y_i|) Σ_t [...], unclipped)
    L    = mean_i w'_i · δ_i²

Fixed point: δ vanishes for every y when log π_θ(y) = log π_ref(y) + ℓ(y)·(β·r̂ − log Z), with
ℓ(y) = |y| under length normalisation (1 without). For responses of one length L the policy is then
π_ref·exp(L·β·r̂)/Z' (an effective inverse temperature L·β), without normalisation
π_ref·exp(β·r̂)/Z. Group normalisation makes r̂ depend on the batch, so only `reward_normalization =
'none'` (raw rewards) defines an exact target distribution.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from flowrl_jax import rules as R
from flowrl_jax.algorithms import advantages as A
from flowrl_jax.algorithms.registry import Algorithm, Batch, always, register

IS_WEIGHT_RULES = ("clip", "cap", "none", "mean")


def default_config() -> ConfigDict:
    return ConfigDict(
        {
            "beta": 15.0,  # β: inverse temperature of the target; the paper's best in its ablation
            "reward_normalization": "group",  # 'group': r̂ = (r − mean_G) / (std_G + ε); 'none': raw r
            "norm_eps": 1e-6,  # ε in the group normalisation (paper and code)
            "length_normalize": True,  # 1/|y| on both log-prob sums (paper and code)
            # w': 'clip' = clip(w, 1−ε, 1+ε) (paper formula); 'cap' = min(w, is_cap) (current
            # official code); 'none' = w unclipped (the paper-era code behind its numbers);
            # 'mean' = exp((1/|y|) Σ_t log ratio), the geometric mean of the token ratios: a
            # token-sum weight vanishes or explodes on long responses, the mean stays near 1.
            "is_weight": "clip",
            "is_clip_eps": 0.2,  # ε of the 'clip' rule
            "is_cap": 10.0,  # the 'cap' rule's ceiling
        }
    )


def prepare(batch: Batch, cfg) -> Batch:
    if cfg.reward_normalization == "group":
        scores = A.group_normalize(batch.rewards, batch.group, cfg.norm_eps)
    elif cfg.reward_normalization == "none":
        scores = batch.rewards
    else:
        raise ValueError(
            f"algorithm.flowrl.reward_normalization={cfg.reward_normalization!r}; "
            "known: 'group', 'none'"
        )
    return batch._replace(scores=scores.astype(jnp.float32))


def importance_weight(log_w, n, cfg):
    """log w [B] (the token sum of the log ratios), n [B] response lengths -> w' [B] (detached)
    under the configured rule."""
    log_w = jax.lax.stop_gradient(log_w)
    if cfg.is_weight == "mean":
        return jnp.exp(log_w / jnp.maximum(n, 1.0))
    if cfg.is_weight == "clip":
        eps = cfg.is_clip_eps
        return jnp.clip(jnp.exp(log_w), 1.0 - eps, 1.0 + eps)
    if cfg.is_weight == "cap":
        return jnp.minimum(jnp.exp(log_w), cfg.is_cap)
    if cfg.is_weight == "none":
        return jnp.exp(log_w)
    raise ValueError(
        f"algorithm.flowrl.is_weight={cfg.is_weight!r}; known: {', '.join(IS_WEIGHT_RULES)}"
    )


def loss_terms(batch: Batch, cfg):
    m = batch.mask
    n = A.lengths(m)  # [B]
    norm = jnp.maximum(n, 1.0) if cfg.length_normalize else 1.0
    logp_bar = A.seq_sum(batch.logp, m) / norm  # [B]
    ref = batch.ref_logp if batch.ref_logp is not None else jnp.zeros_like(batch.logp)
    ref_bar = A.seq_sum(ref, m) / norm
    target = cfg.beta * batch.scores  # β·r̂ [B]
    delta = batch.logz + logp_bar - target - ref_bar  # [B]
    log_w = A.seq_sum(batch.logp - batch.old_logp, m)  # token sum, not length-normalised
    w = importance_weight(log_w, n, cfg)
    valid = (n > 0).astype(jnp.float32)  # padding rows carry no trajectory
    count = valid.sum()
    raw_w = jnp.exp(jax.lax.stop_gradient(log_w))
    sg = jax.lax.stop_gradient
    mean = lambda x: jnp.sum(valid * x) / jnp.maximum(count, 1.0)
    metrics = A.policy_metrics(batch, None, None) | {
        "flowrl/logz": mean(sg(batch.logz)),
        # The log Z that minimises the loss for the current policy (E[δ] = 0 at fixed w' = 1).
        "flowrl/logz_optimal": mean(sg(target - logp_bar + ref_bar)),
        "flowrl/delta_mean": mean(sg(delta)),
        "flowrl/delta_abs": mean(jnp.abs(sg(delta))),
        "flowrl/score_mean": mean(batch.scores),
        "flowrl/is_weight_mean": mean(w),
        "flowrl/is_weight_raw_max": jnp.max(jnp.where(valid > 0, raw_w, -jnp.inf)),
        "flowrl/is_weight_clip_fraction": mean((w != raw_w).astype(jnp.float32)),
    }
    return jnp.sum(valid * w * delta**2), count, metrics


ALGORITHM = register(
    Algorithm(
        "flowrl",
        default_config,
        prepare,
        loss_terms,
        needs_ref=always,
        needs_logz=True,
        rules={
            "beta": R.POSITIVE,
            "reward_normalization": R.OneOf(("group", "none")),
            "norm_eps": R.POSITIVE,
            "is_weight": R.OneOf(IS_WEIGHT_RULES),
            "is_clip_eps": R.FRACTION,
            "is_cap": R.POSITIVE,
        },
    )
)
