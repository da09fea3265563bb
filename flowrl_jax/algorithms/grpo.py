"""GRPO (DeepSeekMath, arXiv 2402.03300): group-normalised advantages, PPO-clip per token, optional
k3 KL to the reference in the loss; sequences averaged after a per-sequence token mean."""

from __future__ import annotations

from ml_collections import ConfigDict

from flowrl_jax import rules as R
from flowrl_jax.algorithms import advantages as A
from flowrl_jax.algorithms.registry import Algorithm, Batch, register, when_kl


def default_config() -> ConfigDict:
    return ConfigDict(
        {
            "clip_eps": 0.2,  # ε of the clipped ratio (PPO and GRPO papers)
            "kl_coef": 0.0,  # β of the k3 KL to the reference (GRPO paper 0.04; 0 = off, no ref pass)
            "norm_eps": 1e-6,  # ε in (r − mean) / (std + ε)
            "scale_rewards": True,  # divide by the group std (False: Dr. GRPO's centring only)
            "loss_agg": "seq-mean-token-mean",  # as published; see advantages.AGGREGATIONS
        }
    )


def prepare(batch: Batch, cfg) -> Batch:
    adv = A.group_normalize(batch.rewards, batch.group, cfg.norm_eps, cfg.scale_rewards)
    return batch._replace(scores=adv, advantages=adv[:, None] * batch.mask)


def clipped_policy_loss(batch: Batch, cfg, eps_low: float, eps_high: float, kl_coef: float):
    """The PPO-clip token loss (+ kl_coef·k3), aggregated per cfg.loss_agg -> (total, count,
    metrics): GRPO, DAPO, PPO and REINFORCE++ differ only in their advantages, ε's, KL and
    aggregation."""
    per_token, ratio, clipped = A.clipped_surrogate(
        batch.logp, batch.old_logp, batch.advantages, eps_low, eps_high
    )
    if kl_coef:
        per_token = per_token + kl_coef * A.k3(batch.logp, batch.ref_logp)
    total, count = A.aggregate_terms(per_token, batch.mask, cfg.loss_agg)
    return total, count, A.policy_metrics(batch, ratio, clipped)


def loss_terms(batch: Batch, cfg):
    return clipped_policy_loss(batch, cfg, cfg.clip_eps, cfg.clip_eps, cfg.kl_coef)


RULES = {
    "clip_eps": R.FRACTION,
    "kl_coef": R.NON_NEGATIVE,
    "norm_eps": R.POSITIVE,
    "loss_agg": R.OneOf(A.AGGREGATIONS),
}
ALGORITHM = register(
    Algorithm("grpo", default_config, prepare, loss_terms, needs_ref=when_kl, rules=RULES)
)
