"""REINFORCE++ (arXiv 2501.03262): no critic. The reward goes on the last response token, every
token pays a KL penalty β·(log π_old − log π_ref); returns G_t (γ = 1) are normalised over the whole
batch's tokens and used as advantages in the PPO-clip loss."""

from __future__ import annotations

from ml_collections import ConfigDict

from flowrl_jax import rules as R
from flowrl_jax.algorithms import advantages as A
from flowrl_jax.algorithms.grpo import clipped_policy_loss
from flowrl_jax.algorithms.ppo import token_rewards
from flowrl_jax.algorithms.registry import Algorithm, Batch, always, register


def default_config() -> ConfigDict:
    return ConfigDict(
        {
            "clip_eps": 0.2,  # ε of the clipped ratio
            "kl_coef": 0.01,  # β of the per-token KL penalty in the reward (paper)
            "gamma": 1.0,  # γ of the returns
            "loss_agg": "token-mean",
        }
    )


def prepare(batch: Batch, cfg) -> Batch:
    returns = A.discounted_returns(token_rewards(batch, cfg.kl_coef), batch.mask, cfg.gamma)
    return batch._replace(advantages=A.whiten(returns, batch.mask), returns=returns)


def loss_terms(batch: Batch, cfg):
    return clipped_policy_loss(batch, cfg, cfg.clip_eps, cfg.clip_eps, 0.0)


ALGORITHM = register(
    Algorithm(
        "reinforce_pp",
        default_config,
        prepare,
        loss_terms,
        needs_ref=always,
        rules={
            "clip_eps": R.FRACTION,
            "kl_coef": R.NON_NEGATIVE,
            "gamma": R.FRACTION,
            "loss_agg": R.OneOf(A.AGGREGATIONS),
        },
    )
)
