"""The training phases as pure functions of arrays (jit them with the static pieces bound by
`functools.partial`): `score` (reference log-probs and old values, no gradient), `prepare` (the
algorithm's advantages) and `update` (forward, the registered loss, one optimiser step).

No branch per algorithm: the step asks the algorithm which inputs it needs (reference log-probs,
log Z, values) and hands every loss the same `algorithms.Batch`.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from ml_collections import ConfigDict

from flowrl_jax import algorithms
from flowrl_jax.algorithms import heads
from flowrl_jax.models.families import DecoderConfig
from flowrl_jax.models.model import forward
from flowrl_jax.rollout.logprobs import logprobs_from_hidden, token_logprobs


def optimizer_config() -> ConfigDict:
    return ConfigDict(
        {
            "learning_rate": 1e-6,  # paper (Qwen2.5-7B math)
            "warmup_steps": 10,  # linear warm-up, then constant (paper)
            "weight_decay": 0.1,  # AdamW (paper)
            "grad_clip": 1.0,  # global norm over all parameters, heads included (paper)
        }
    )


class TrainState(NamedTuple):
    step: jax.Array  # int32 optimiser steps taken
    params: dict  # {'policy': ..., 'logz_head'?: ..., 'value_head'?: ...}
    opt_state: optax.OptState
    rng: jax.Array  # a key; split per phase with fold_in


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: hashed by identity (ConfigDicts are not)
class StepSpec:
    """The static pieces of the step (bound with functools.partial before jit)."""

    model: DecoderConfig
    algorithm: str
    algo_cfg: ConfigDict  # config.algorithm[<name>]
    heads_cfg: ConfigDict  # config.heads
    prompt_len: int  # P: tokens[:, :P] is the (left-padded) prompt, the rest the response
    temperature: float  # log-probs are of logits / temperature, as sampled
    chunk: int = 256  # positions per chunk of the log-prob computation

    @property
    def alg(self) -> algorithms.Algorithm:
        return algorithms.get(self.algorithm)


def make_optimizer(cfg: ConfigDict, heads_cfg: ConfigDict) -> optax.GradientTransformation:
    def adamw(lr):
        schedule = optax.warmup_constant_schedule(0.0, lr, max(cfg.warmup_steps, 1))
        return optax.adamw(schedule, weight_decay=cfg.weight_decay)

    inner = adamw(cfg.learning_rate)
    if heads_cfg.logz.learning_rate > 0:  # the log-Z head at its own rate, same clip and decay
        labels = lambda params: {k: "logz" if k == "logz_head" else "main" for k in params}
        inner = optax.multi_transform(
            {"main": inner, "logz": adamw(heads_cfg.logz.learning_rate)}, labels
        )
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), inner)


def init_state(spec: StepSpec, policy_params, optimizer, rng) -> TrainState:
    alg = spec.alg
    head_rng, rng = jax.random.split(rng)
    params = {"policy": policy_params} | heads.init(
        head_rng, spec.model.hidden_size, spec.heads_cfg, alg.needs_logz, alg.needs_values
    )
    return TrainState(jnp.int32(0), params, optimizer.init(params), rng)


def _values(spec: StepSpec, params, hidden):
    """V(s_t) for the response tokens: the hidden state that predicts token t."""
    h = hidden[:, spec.prompt_len - 1 : -1]  # [B, N, D]
    if spec.heads_cfg.value.detach_backbone:
        h = jax.lax.stop_gradient(h)
    return heads.ValueHead().apply({"params": params["value_head"]}, h)


def score(spec: StepSpec, params, ref_params, tokens, mask):
    """Inputs of `prepare` that need a forward and no gradient: (ref log-probs [B, N] or None, old
    values [B, N] or None). tokens, mask [B, P + N]."""
    P = spec.prompt_len
    ref = None
    if algorithms.needs_ref(spec.alg, spec.algo_cfg):
        ref = token_logprobs(spec.model, ref_params, tokens, mask, spec.temperature, spec.chunk)
        ref = ref[:, P:]
    values = None
    if spec.alg.needs_values:
        hidden = forward(spec.model, params["policy"], tokens, mask, return_logits=False).hidden
        values = _values(spec, params, hidden)
    return ref, values


def prepare(spec: StepSpec, batch: algorithms.Batch) -> algorithms.Batch:
    return spec.alg.prepare(batch, spec.algo_cfg)


def loss_fn(spec: StepSpec, params, tokens, mask, batch: algorithms.Batch, rng):
    P = spec.prompt_len
    hidden = forward(spec.model, params["policy"], tokens, mask, return_logits=False).hidden
    logp, entropy = logprobs_from_hidden(
        spec.model, params["policy"], hidden, tokens, spec.temperature, spec.chunk, True
    )
    batch = batch._replace(logp=logp[:, P:], entropy=jax.lax.stop_gradient(entropy[:, P:]))
    if spec.alg.needs_logz:
        zc = spec.heads_cfg.logz
        pooled = heads.pool_prompt(hidden[:, :P], mask[:, :P], zc.drop_last_prompt_token)
        if zc.detach_backbone:
            pooled = jax.lax.stop_gradient(pooled)
        logz = heads.LogZHead(zc.depth, zc.dropout).apply(
            {"params": params["logz_head"]}, pooled, deterministic=False, rngs={"dropout": rng}
        )
        batch = batch._replace(logz=logz)
    if spec.alg.needs_values:
        batch = batch._replace(values=_values(spec, params, hidden))
    return spec.alg.loss(batch, spec.algo_cfg)


def update(spec: StepSpec, optimizer, state: TrainState, tokens, mask, batch: algorithms.Batch):
    """One optimiser step on a mini-batch. tokens, mask [B, P + N]; batch: the prepared
    response-aligned arrays (logp is filled here). -> (state, metrics)."""
    rng = jax.random.fold_in(state.rng, state.step)
    grad_fn = jax.value_and_grad(loss_fn, argnums=1, has_aux=True)
    (loss, metrics), grads = grad_fn(spec, state.params, tokens, mask, batch, rng)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = metrics | {"loss": loss, "grad_norm": optax.tree.norm(grads)}
    return TrainState(state.step + 1, params, opt_state, state.rng), metrics
