"""DAPO (arXiv 2503.14476): clip-higher (ε_low 0.2, ε_high 0.28), token-level loss aggregation, no
KL, an overlong penalty in the reward, and dynamic sampling (groups whose rewards are all equal are
dropped and more prompts sampled: the `group_filter` the loop applies)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from flowrl_jax import rules as R
from flowrl_jax.algorithms import advantages as A
from flowrl_jax.algorithms.grpo import clipped_policy_loss
from flowrl_jax.algorithms.registry import Algorithm, Batch, GroupFilter, register


def default_config() -> ConfigDict:
    return ConfigDict(
        {
            "clip_eps_low": 0.2,  # ε_low (paper)
            "clip_eps_high": 0.28,  # ε_high: clip-higher keeps low-probability tokens exploring
            "norm_eps": 1e-6,
            "loss_agg": "token-mean",  # token-level aggregation (paper)
            "overlong_penalty": True,  # soft overlong punishment (paper section 3.4)
            # L_cache: the penalty ramps from 0 to -overlong_penalty_factor over the last L_cache
            # slots before L_max (rollout.max_new_tokens). As a fraction of L_max, so that it
            # fits any budget: the paper's 4096 of 20480 is 0.2.
            "overlong_buffer_fraction": 0.2,
            "overlong_buffer": 0,  # L_cache in tokens instead (must be < L_max); 0 = the fraction
            "overlong_penalty_factor": 1.0,
            "dynamic_sampling": True,  # drop all-equal groups and sample more (the loop does it)
            "max_refills": 8,  # rollout batches drawn at most per step to fill the batch
        }
    )


def overlong_penalty(length, max_len: int, buffer: int, factor: float):
    """DAPO's R_length: 0 up to L_max − L_cache, then linear down to −factor at L_max."""
    buffer = min(buffer, max_len)
    start = max_len - buffer
    return -factor * jnp.clip((length - start) / max(buffer, 1), 0.0, 1.0)


def buffer_length(cfg, max_len: int) -> int:
    """L_cache in tokens: overlong_buffer, or overlong_buffer_fraction of L_max."""
    return int(cfg.overlong_buffer) or round(cfg.overlong_buffer_fraction * max_len)


def check(cfg, rollout) -> None:
    """A buffer as long as the budget would punish every response from length 0."""
    if not cfg.overlong_penalty:
        return
    L = rollout.max_new_tokens
    if not cfg.overlong_buffer and not 0.0 < cfg.overlong_buffer_fraction < 1.0:
        raise ValueError(
            f"algorithm.dapo.overlong_buffer_fraction={cfg.overlong_buffer_fraction} must be in "
            "(0, 1) (the paper's 4096 of 20480 is 0.2)"
        )
    buffer = buffer_length(cfg, L)
    if not 0 < buffer < L:
        raise ValueError(
            f"algorithm.dapo.overlong_buffer={cfg.overlong_buffer} is not shorter than the response "
            f"budget rollout.max_new_tokens={L}: the overlong penalty would punish every response; "
            "set it below the budget, or 0 to use overlong_buffer_fraction (paper: 0.2)"
        )


def prepare(batch: Batch, cfg) -> Batch:
    rewards = batch.rewards
    if cfg.overlong_penalty:
        T = batch.mask.shape[-1]
        rewards = rewards + overlong_penalty(
            A.lengths(batch.mask), T, buffer_length(cfg, T), cfg.overlong_penalty_factor
        )
    adv = A.group_normalize(rewards, batch.group, cfg.norm_eps)
    return batch._replace(shaped_rewards=rewards, scores=adv, advantages=adv[:, None] * batch.mask)


def loss_terms(batch: Batch, cfg):
    return clipped_policy_loss(batch, cfg, cfg.clip_eps_low, cfg.clip_eps_high, 0.0)


def varied(rewards) -> bool:
    """A group whose rewards are not all equal: its advantages are not all 0, so it trains."""
    return bool(np.ptp(rewards) > 0)


def group_filter(cfg) -> GroupFilter | None:
    return GroupFilter(varied, cfg.max_refills) if cfg.dynamic_sampling else None


ALGORITHM = register(
    Algorithm(
        "dapo",
        default_config,
        prepare,
        loss_terms,
        check=check,
        group_filter=group_filter,
        rules={
            "clip_eps_low": R.FRACTION,
            "clip_eps_high": R.NON_NEGATIVE,
            "norm_eps": R.POSITIVE,
            "loss_agg": R.OneOf(A.AGGREGATIONS),
            "overlong_buffer_fraction": R.Range(0.0, 1.0, high_open=True),
            "overlong_buffer": R.COUNT,
            "overlong_penalty_factor": R.NON_NEGATIVE,
            "max_refills": R.COUNT,
        },
    )
)
