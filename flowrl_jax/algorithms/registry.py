"""Algorithms by name: one config key (`algorithm.name`) picks the loss; the train step has no
branch per algorithm.

Each algorithm is two pure functions over a `Batch` of arrays:
  prepare(batch, cfg) -> batch   once per rollout batch, no gradient: rewards -> advantages, targets
  loss_terms(batch, cfg) -> (total, count, metrics)   per mini-batch: the loss is total / count,
      `total` a sum of per-row terms differentiated through batch.logp (and batch.logz /
      batch.values where the algorithm has them), `count` what it is averaged over (tokens, rows)
      and independent of the parameters. The step reads the mini-batch's count first and sums
      each micro-batch's total over it, so any reduction of that form accumulates exactly.
and what the step must do for it: which inputs to compute (reference log-probs, log Z, values) and,
for dynamic sampling, which groups to keep.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp


class Batch(NamedTuple):
    """Response-aligned arrays: B sequences (the group axis folded in), T response slots. Each
    field has one meaning whichever algorithm runs; a field the algorithm does not use is None."""

    # Set by the rollout (the loop or the fused step):
    old_logp: jax.Array  # [B, T] float32 log π_old(y_t) of logits / temperature (the sampler's)
    mask: jax.Array  # [B, T] float32, 1 on response tokens (right-padded)
    rewards: jax.Array  # [B] float32 the task's reward, as the reward function gave it
    group: jax.Array  # [B] int32 prompt id: rows with equal ids form one group
    logp: jax.Array | None = None  # [B, T] log π_θ(y_t), differentiable; set by the update
    ref_logp: jax.Array | None = None  # [B, T] log π_ref(y_t), detached; where needs_ref(cfg)
    old_values: jax.Array | None = None  # [B, T] V(s_t) at rollout time; where needs_values
    # Set by the update from the current parameters (differentiable):
    logz: jax.Array | None = None  # [B] log Z_φ(x) of the log-Z head; where needs_logz
    values: jax.Array | None = None  # [B, T] V(s_t) of the value head; where needs_values
    entropy: jax.Array | None = None  # [B, T] policy entropy, detached, logged only
    # Set by prepare:
    shaped_rewards: jax.Array | None = None  # [B] rewards + the algorithm's shaping (DAPO's
    #                                          overlong penalty), where it shapes them
    scores: jax.Array | None = None  # [B] r̂, the per-sequence score after normalisation: FlowRL's
    #                                  target, GRPO / DAPO / GSPO's sequence advantage
    advantages: jax.Array | None = None  # [B, T] per token, or [B] per sequence (GSPO)
    returns: jax.Array | None = None  # [B, T] value targets (PPO) or discounted returns


def never(cfg) -> bool:
    return False


def always(cfg) -> bool:
    return True


def when_kl(cfg) -> bool:
    """A reference pass only where the configuration pays a KL to it (kl_coef != 0)."""
    return float(cfg.kl_coef) != 0.0


class GroupFilter(NamedTuple):
    """Dynamic sampling: the loop keeps the groups `keep` accepts and draws more prompts, up to
    `max_rollouts` rollout batches a step; if the batch is still short, refused groups fill it."""

    keep: Callable  # (rewards [n] numpy of one group) -> bool
    max_rollouts: int


@dataclasses.dataclass(frozen=True)
class Algorithm:
    name: str
    default_config: Callable  # () -> ConfigDict of the algorithm's knobs
    prepare: Callable  # (Batch, cfg) -> Batch
    loss_terms: Callable  # (Batch, cfg) -> (total, count, metrics): see the module docstring
    needs_ref: Callable = never  # (cfg) -> bool: the step computes batch.ref_logp
    needs_logz: bool = False  # the step computes batch.logz from the log-Z head
    needs_values: bool = False  # ... batch.values / old_values from the value head
    # (cfg, config.rollout) -> None: refuses settings that cannot work together, before anything
    # compiles (trainer.check_sizes calls it).
    check: Callable | None = None
    # (cfg) -> GroupFilter, or None: one rollout batch a step, every group kept (DAPO filters).
    group_filter: Callable = lambda cfg: None
    # The allowed values of its knobs (flowrl_jax/rules.py), checked before anything is built.
    rules: dict = dataclasses.field(default_factory=dict)

    def loss(self, batch: Batch, cfg):
        """The loss on one batch at once -> (total / count, metrics)."""
        total, count, metrics = self.loss_terms(batch, cfg)
        return total / jnp.maximum(count, 1.0), metrics


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
