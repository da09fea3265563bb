"""PPO (arXiv 1707.06347) for LLMs: a value head V(s_t) on the policy's hidden states, the sequence
reward on the last response token (optionally minus a per-token KL penalty to the reference), GAE
advantages whitened over the batch, the clipped policy loss and a clipped value loss."""

from __future__ import annotations

import jax.numpy as jnp
from ml_collections import ConfigDict

from flowrl_jax import rules as R
from flowrl_jax.algorithms import advantages as A
from flowrl_jax.algorithms.grpo import clipped_policy_loss
from flowrl_jax.algorithms.registry import Algorithm, Batch, register, when_kl


def default_config() -> ConfigDict:
    return ConfigDict(
        {
            "clip_eps": 0.2,  # ε of the clipped ratio
            "gamma": 1.0,  # γ: no discount inside one response (verl, OpenRLHF)
            "lam": 0.95,  # λ of GAE (TRL's default; verl uses 1.0)
            "value_clip": 0.2,  # ε_v: V may move at most this far from V_old per update
            "vf_coef": 0.5,  # c_1: weight of the value loss (PPO paper)
            "kl_coef": 0.0,  # β of the per-token k1 KL penalty in the reward (0 = off, no ref pass)
            "whiten_advantages": True,
            "loss_agg": "token-mean",
        }
    )


def token_rewards(batch: Batch, kl_coef: float):
    """The sequence reward on each row's last response token, minus β·(log π_old − log π_ref)."""
    r = batch.rewards[:, None] * A.last_token(batch.mask)
    if kl_coef:
        r = r - kl_coef * (batch.old_logp - batch.ref_logp) * batch.mask
    return r


def prepare(batch: Batch, cfg) -> Batch:
    adv, returns = A.gae(
        token_rewards(batch, cfg.kl_coef), batch.old_values, batch.mask, cfg.gamma, cfg.lam
    )
    if cfg.whiten_advantages:
        adv = A.whiten(adv, batch.mask)
    return batch._replace(advantages=adv, returns=returns)


def value_loss(batch: Batch, cfg):
    """0.5 · max((V − R)², (V_old + clip(V − V_old, ±ε_v) − R)²) per token."""
    v, old, R = batch.values, batch.old_values, batch.returns
    clipped = old + jnp.clip(v - old, -cfg.value_clip, cfg.value_clip)
    # Counted as clipped only where the clip moved V: for an unclipped token old + (V - old) can
    # differ from V in the last bit, which would make the fraction a matter of rounding.
    chose_clipped = (clipped - R) ** 2 > (v - R) ** 2
    moved = jnp.abs(v - old) > cfg.value_clip
    return 0.5 * jnp.maximum((v - R) ** 2, (clipped - R) ** 2), chose_clipped & moved


def loss_terms(batch: Batch, cfg):
    policy, count, metrics = clipped_policy_loss(batch, cfg, cfg.clip_eps, cfg.clip_eps, 0.0)
    per_token, value_clipped = value_loss(batch, cfg)
    vf, _ = A.aggregate_terms(per_token, batch.mask, cfg.loss_agg)  # the same count
    per = lambda total: total / jnp.maximum(count, 1.0)
    metrics = metrics | {
        "ppo/policy_loss": per(policy),
        "ppo/value_loss": per(vf),
        "ppo/value_mean": A.masked_mean(batch.values, batch.mask),
        "ppo/value_clip_fraction": A.masked_mean(value_clipped.astype(jnp.float32), batch.mask),
    }
    return policy + cfg.vf_coef * vf, count, metrics


ALGORITHM = register(
    Algorithm(
        "ppo",
        default_config,
        prepare,
        loss_terms,
        needs_ref=when_kl,
        needs_values=True,
        rules={
            "clip_eps": R.FRACTION,
            "gamma": R.FRACTION,
            "lam": R.FRACTION,
            "value_clip": R.NON_NEGATIVE,
            "vf_coef": R.NON_NEGATIVE,
            "kl_coef": R.NON_NEGATIVE,
            "loss_agg": R.OneOf(A.AGGREGATIONS),
        },
    )
)
