"""Algorithms by name: one config key (`algorithm.name`) picks the loss; the train step has no
branch per algorithm.

Each algorithm is two pure functions over a `Batch` of arrays:
  prepare(batch, cfg) -> batch   once per rollout batch, no gradient: rewards -> advantages, targets
  loss(batch, cfg) -> (loss, metrics)   per mini-batch, differentiated through batch.logp (and
                                        batch.logz / batch.values where the algorithm has them)
and flags saying which inputs the step must compute for it (reference log-probs, log Z, values).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax


class Batch(NamedTuple):
    """Response-aligned arrays: B sequences (the group axis folded in), T response slots.
    Fields an algorithm does not use may be None."""

    logp: jax.Array  # [B, T] float32 log pi_theta(y_t) of logits / temperature
    old_logp: jax.Array  # [B, T] log pi_old (the sampling policy), detached
    mask: jax.Array  # [B, T] float32, 1 on response tokens (right-padded)
    rewards: jax.Array  # [B] float32 sequence reward
    group: jax.Array  # [B] int32 prompt id: rows with equal ids form one group
    ref_logp: jax.Array | None = None  # [B, T] log pi_ref, detached
    logz: jax.Array | None = None  # [B] log Z_phi(x) (FlowRL)
    values: jax.Array | None = None  # [B, T] V(s_t) of the current value head (PPO)
    old_values: jax.Array | None = None  # [B, T] V(s_t) at rollout time (PPO)
    entropy: jax.Array | None = None  # [B, T] policy entropy, logged only
    advantages: jax.Array | None = None  # [B, T] or [B], set by prepare
    returns: jax.Array | None = None  # [B, T] value targets (PPO), set by prepare
    scores: jax.Array | None = None  # [B] the reward as the loss sees it (r̂), set by prepare


@dataclasses.dataclass(frozen=True)
class Algorithm:
    name: str
    default_config: Callable  # () -> ConfigDict of the algorithm's knobs
    prepare: Callable  # (Batch, cfg) -> Batch
    loss: Callable  # (Batch, cfg) -> (loss, metrics)
    needs_ref: bool = False  # the step computes batch.ref_logp
    needs_logz: bool = False  # ... batch.logz from the log-Z head
    needs_values: bool = False  # ... batch.values / old_values from the value head
    # (cfg, config.rollout) -> None: refuses settings that cannot work together, before anything
    # compiles (trainer.check_sizes calls it).
    check: Callable | None = None


_REGISTRY: dict[str, Algorithm] = {}


def register(algorithm: Algorithm) -> Algorithm:
    if algorithm.name in _REGISTRY:
        raise ValueError(f"algorithm {algorithm.name!r} is registered twice")
    _REGISTRY[algorithm.name] = algorithm
    return algorithm


def get(name: str) -> Algorithm:
    if name not in _REGISTRY:
        raise ValueError(f"unknown algorithm {name!r}; known: {', '.join(names())}")
    return _REGISTRY[name]


def names() -> list[str]:
    return sorted(_REGISTRY)


def needs_ref(algorithm: Algorithm, cfg) -> bool:
    """Whether the step must compute reference log-probs for this configuration."""
    return algorithm.needs_ref or float(cfg.get("kl_coef", 0.0)) != 0.0
