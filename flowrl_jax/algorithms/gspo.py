"""GSPO (arXiv 2507.18071): a sequence-level, length-normalised importance ratio
s_i = exp((1/|y_i|) Σ_t [log π_θ − log π_old]) clipped per sequence, with group-normalised
advantages; loss = −mean_i min(s_i A_i, clip(s_i, 1−ε_low, 1+ε_high) A_i)."""

from __future__ import annotations

import jax.numpy as jnp
from ml_collections import ConfigDict

from flowrl_jax import rules as R
from flowrl_jax.algorithms import advantages as A
from flowrl_jax.algorithms.registry import Algorithm, Batch, register


def default_config() -> ConfigDict:
    return ConfigDict(
        {
            # ε's of the sequence clip: a length-normalised ratio moves little, hence the paper's
            # small values (3e-4 / 4e-4).
            "clip_eps_low": 3e-4,
            "clip_eps_high": 4e-4,
            "norm_eps": 1e-6,
        }
    )


def prepare(batch: Batch, cfg) -> Batch:
    adv = A.group_normalize(batch.rewards, batch.group, cfg.norm_eps)
    return batch._replace(scores=adv, advantages=adv)  # [B]: one advantage per sequence


def loss_terms(batch: Batch, cfg):
    m = batch.mask
    n = A.lengths(m)
    log_s = A.seq_sum(batch.logp - batch.old_logp, m) / jnp.maximum(n, 1.0)  # [B]
    s = jnp.exp(log_s)
    adv = batch.advantages
    unclipped = s * adv
    clipped = jnp.clip(s, 1.0 - cfg.clip_eps_low, 1.0 + cfg.clip_eps_high) * adv
    per_seq = -jnp.minimum(unclipped, clipped)
    valid = (n > 0).astype(jnp.float32)
    count = valid.sum()
    mean = lambda x: jnp.sum(x * valid) / jnp.maximum(count, 1.0)
    metrics = A.policy_metrics(batch, None, None) | {
        "gspo/seq_ratio_mean": mean(s),
        "gspo/seq_clip_fraction": mean(clipped < unclipped),
    }
    return jnp.sum(per_seq * valid), count, metrics


RULES = {"clip_eps_low": R.FRACTION, "clip_eps_high": R.NON_NEGATIVE, "norm_eps": R.POSITIVE}
ALGORITHM = register(Algorithm("gspo", default_config, prepare, loss_terms, rules=RULES))
