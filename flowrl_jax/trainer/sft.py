"""Supervised fine-tuning (SFT) on demonstrations: the warm-up before RL, or a job of its own.

The loss is the mean cross-entropy over the response tokens only, the prompt and the padding masked
out: `transformers`' causal-LM loss with the other labels at -100 (tested equal, loss and gradient).
It runs through the chunked log-prob path, so the [B, T, V] float32 logits never exist, on the RL
update's mesh, partition rules, micro-batch split and optimiser factory (trainer/step.py).

Rows are right-padded (prompt, response, padding): positions then run 0.. on every row, as a
reference implementation without position ids computes them.

`run` trains `sft.steps` optimiser steps in `<workdir>/sft/` (checkpoints, metrics.jsonl,
tensorboard), resuming from its latest checkpoint; a finished warm-up is loaded, not redone.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from ml_collections import ConfigDict

from flowrl_jax import mesh as mesh_lib
from flowrl_jax import rules as R
from flowrl_jax.models import lora
from flowrl_jax.rollout.logprobs import token_logprobs
from flowrl_jax.trainer import demonstrations, micro
from flowrl_jax.trainer import metrics as metrics_lib
from flowrl_jax.trainer import step as step_lib
from flowrl_jax.trainer.checkpoint import Checkpoints
from flowrl_jax.trainer.stop import StopFlag

log = logging.getLogger("flowrl_jax")


def loss(cfg, params, tokens, mask, loss_mask, chunk: int = 256):
    """tokens, mask, loss_mask [B, T]; loss_mask marks the response tokens to predict. -> (mean
    negative log-likelihood over them, number of them)."""
    total, count = _nll(cfg, params, tokens, mask, loss_mask, chunk)
    return total / jnp.maximum(count, 1.0), count


def _nll(cfg, params, tokens, mask, loss_mask, chunk, dropout=None):
    """(sum of the response tokens' negative log-likelihoods, their count)."""
    logp = token_logprobs(cfg, params, tokens, mask, 1.0, chunk, dropout=dropout)
    weight = loss_mask.astype(jnp.float32) * mask.astype(jnp.float32)
    return -jnp.sum(logp * weight), jnp.sum(weight)


def batch(prompts: list[list[int]], responses: list[list[int]], length: int, pad_id: int = 0):
    """Token-id lists -> (tokens, mask, loss_mask) [B, length] int32, each row prompt + response
    right-padded; a row longer than `length` is an error (the data reader drops and counts them)."""
    B = len(prompts)
    tokens = np.full((B, length), pad_id, np.int32)
    mask = np.zeros((B, length), np.int32)
    loss_mask = np.zeros((B, length), np.int32)
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        n = len(p) + len(r)
        if n > length:
            raise ValueError(
                f"row {i}: {n} tokens (prompt {len(p)} + response {len(r)}) > {length}"
            )
        if not r:
            raise ValueError(f"row {i}: an empty response has nothing to learn")
        tokens[i, :n] = list(p) + list(r)
        mask[i, :n] = 1
        loss_mask[i, len(p) : n] = 1
    return tokens, mask, loss_mask


# --- the phase -----------------------------------------------------------------------------------


def default_config() -> ConfigDict:
    """config.sft. Off while steps and epochs are both 0."""
    optimizer = step_lib.default_config()
    optimizer.update(
        {
            "learning_rate": 1e-5,
            "warmup_steps": 10,
            "schedule": "cosine",
            "min_lr_ratio": 0.1,
            "weight_decay": 0.0,
        }
    )
    return ConfigDict(
        {
            "steps": 0,  # optimiser steps of the warm-up; 0 with epochs 0 = no SFT
            # Passes over the demonstrations instead (steps = ceil(epochs x rows / batch_size));
            # used when steps is 0.
            "epochs": 0.0,
            # Demonstration files, comma-separated (.jsonl / .json / .parquet): rows of prompt +
            # response, or chat messages ending with the assistant's. "" = the task's own
            # demonstrations (the countdown task draws them from its training problems' answers).
            "path": "",
            "fields": dict(demonstrations.FIELDS),  # the files' field names
            # The task's demonstrations: draws per training problem, and the skew of the draw
            # (tasks/countdown.py: answer rank j with probability proportional to 1/(j+1)^skew).
            "per_problem": 4,
            "skew": 1.0,
            "batch_size": 32,  # sequences per optimiser step
            "micro_batches": 1,  # gradient accumulation, as train.micro_batches
            # Longest demonstration in tokens (longer ones are dropped and counted in the log);
            # 0 = the longest prompt the sampler takes + rollout.max_new_tokens.
            "max_len": 0,
            "checkpoint_every": 100,  # optimiser steps between checkpoints (and at the end)
            "optimizer": optimizer,  # the RL optimiser's keys (trainer/step.py), SFT's values
        }
    )


RULES = {
    "steps": R.COUNT,
    "epochs": R.NON_NEGATIVE,
    "per_problem": R.POSITIVE_INT,
    "skew": R.NON_NEGATIVE,
    "batch_size": R.POSITIVE_INT,
    "micro_batches": R.POSITIVE_INT,
    "max_len": R.COUNT,
    "checkpoint_every": R.COUNT,
    "optimizer": step_lib.RULES,
}


def total_steps(cfg: ConfigDict, rows: int) -> int:
    if cfg.steps:
        return int(cfg.steps)
    return math.ceil(cfg.epochs * rows / cfg.batch_size) if cfg.epochs > 0 else 0


def enabled(cfg: ConfigDict) -> bool:
    return cfg.steps > 0 or cfg.epochs > 0


def check(cfg: ConfigDict, mesh, rows: int | None = None) -> None:
    """Sizes and a schedule that cannot work, before anything compiles. rows: the demonstrations'
    count, once they are read (the schedule's length depends on it under sft.epochs)."""
    if cfg.steps < 0 or cfg.epochs < 0:
        raise ValueError(f"sft.steps={cfg.steps}, sft.epochs={cfg.epochs} must be >= 0")
    step_lib.check_micro_batches(cfg.batch_size, cfg.micro_batches, mesh)
    mesh_lib.check_batch(cfg.batch_size, mesh, "sft.batch_size")
    if rows is not None and enabled(cfg):
        try:
            step_lib.learning_rate_schedule(cfg.optimizer, 1.0, total_steps(cfg, rows))
        except ValueError as e:
            raise ValueError(f"sft.{e}") from None


def update(cfg, optimizer, micro_batches: int, chunk: int, state, tokens, mask, loss_mask):
    """One optimiser step on a batch [B, T], its gradient summed over `micro_batches` strided
    micro-batches (trainer/micro.py) in a loop, each weighted by its share of the batch's
    response tokens: the gradient of the whole batch's mean loss. -> (state, metrics)."""
    k = micro_batches
    weight = loss_mask.astype(jnp.float32) * mask.astype(jnp.float32)
    total = jnp.maximum(jnp.sum(weight), 1.0)
    pieces = jax.tree.map(functools.partial(micro.split_rows, k), (tokens, mask, loss_mask))
    trainable, frozen = lora.split(state.params)  # with LoRA: the adapters alone are trained
    rng = jax.random.fold_in(state.rng, state.step)

    def micro_loss(params, j, x):
        dropout = jax.random.fold_in(rng, j) if cfg.lora_dropout else None
        policy = lora.join(params, frozen)["policy"]
        return _nll(cfg, policy, *x, chunk, dropout)[0] / total, None

    value, grads, _ = micro.gradients(micro_loss, trainable, pieces)
    params, opt_state, grads = step_lib.apply_gradients(
        optimizer, state.opt_state, grads, trainable, frozen
    )
    metrics = {"sft/loss": value, "sft/grad_norm": optax.tree.norm(grads), "sft/tokens": total}
    return step_lib.TrainState(state.step + 1, params, opt_state, state.rng), metrics


def jit_update(model_cfg, optimizer, micro_batches: int, mesh, sharding, chunk: int = 256):
    """`update` compiled, the state donated: (state, tokens, mask, loss_mask) -> (state, metrics)."""
    rows = mesh_lib.batch_sharding(mesh, ndim=1)
    return jax.jit(
        functools.partial(update, model_cfg, optimizer, micro_batches, chunk),
        in_shardings=(sharding, rows, rows, rows),
        out_shardings=(sharding, mesh_lib.replicated(mesh)),
        donate_argnums=0,
    )


@dataclasses.dataclass
class Result:
    model: object  # the policy as SFT left it (a Model)
    steps: int  # optimiser steps done of `total`
    total: int
    history: list[dict]  # metrics of the steps this call ran
    preempted: str | None = None  # the signal that stopped it before the end


def _checkpoint_config(config: ConfigDict) -> ConfigDict:
    c = config.checkpoint
    return ConfigDict(
        {"every": config.sft.checkpoint_every, "keep": c.keep, "async_save": c.async_save}
    )


def run(config: ConfigDict, mesh, model, tokenizer, data, rl_started: bool = False) -> Result:
    """The warm-up in `<workdir>/sft`: trained, resumed from its latest checkpoint, or (finished, or
    RL already started) loaded. data: demonstrations.Encoded. The returned model is RL's starting
    point and its reference policy."""
    cfg = config.sft
    total = total_steps(cfg, len(data))
    directory = os.path.join(config.workdir, "sft")
    optimizer = step_lib.make_optimizer(cfg.optimizer, None, total_steps=total)
    rate = step_lib.learning_rate_schedule(cfg.optimizer, cfg.optimizer.learning_rate, total)
    init = _init(optimizer)
    rng = jax.random.key(config.seed)
    adapting = lora.in_sft(config.lora)
    if adapting:  # LoRA SFT: fresh adapters, trained on the frozen base (RL goes on from them)
        model = lora.adapt(config.lora, model, config.seed)
    like, sharding = abstract_state(optimizer, model.params, mesh, model.cfg.family)
    if adapting:  # a restore's frozen base: the model's own arrays (checkpoints hold adapters)
        base = {"policy": lora.base(model.params)}
        like = like._replace(params=lora.join(lora.split(like.params)[0], base))
    checkpoints = Checkpoints(directory, _checkpoint_config(config))
    restored = checkpoints.restore_latest(like, set_aside=True)
    if rl_started:
        checkpoints.close()
        if restored is None:
            raise FileNotFoundError(
                f"{config.workdir} holds RL checkpoints but no readable SFT checkpoint under "
                f"{directory}: RL's reference policy is the model SFT left, which cannot be "
                "rebuilt; restore it, or start in a new --workdir"
            )
        state, _ = restored
        if int(state.step) < total:
            log.warning(
                "SFT stopped at step %d of %d, but RL has started: the warm-up is not resumed",
                int(state.step),
                total,
            )
        return Result(_policy(model, state), int(state.step), total, [])
    if restored:
        state = restored[0]
    else:  # with LoRA the state takes the base arrays over (donated: one copy of the weights)
        donate = (0,) if adapting else ()
        state = jax.jit(init, out_shardings=sharding, donate_argnums=donate)(model.params, rng)
    first = int(state.step)
    result = Result(None, first, total, [])
    if first < total:
        log.info(
            "SFT: %s %d optimiser steps of %d demonstrations x %d",
            f"resuming after step {first} of" if first else "training",
            total,
            len(data),
            cfg.batch_size,
        )
        setup = _Setup(sharding, optimizer, rate, checkpoints)
        state = _train(config, mesh, model, tokenizer, data, state, result, setup)
    else:
        log.info("SFT: finished already (%d steps); loaded", total)
    checkpoints.close()
    result.model = _policy(model, state)
    return result


def _init(optimizer):
    def init(params, rng):
        params = {"policy": params}
        opt_state = optimizer.init(lora.split(params)[0])  # with LoRA: the adapters' only
        return step_lib.TrainState(jnp.int32(0), params, opt_state, rng)

    return init


def abstract_state(optimizer, policy, mesh, family: str):
    """(the SFT TrainState as ShapeDtypeStructs placed as `run` places it, its shardings), for
    policy parameters (arrays or shapes) `policy`."""
    abstract = jax.eval_shape(_init(optimizer), policy, jax.random.key(0))
    sharding = step_lib.state_shardings(mesh, abstract, family)
    return step_lib.placed(abstract, sharding), sharding


def _policy(model, state):
    return dataclasses.replace(model, params=state.params["policy"])


class _Setup(NamedTuple):
    """What `run` builds before training: the state's sharding, the optimiser, its rate schedule
    and the checkpoints."""

    sharding: object
    optimizer: object
    rate: object
    checkpoints: Checkpoints


def _train(config, mesh, model, tokenizer, data, state, result: Result, setup: _Setup):
    """The optimiser steps after `result.steps`."""
    sharding, optimizer, rate, checkpoints = setup
    cfg = config.sft
    limit = demonstrations.max_len(config)
    step_fn = jit_update(model.cfg, optimizer, cfg.micro_batches, mesh, sharding)
    on_mesh = lambda x: mesh_lib.to_device(x, mesh_lib.batch_sharding(mesh, np.ndim(x)))
    peak, _ = metrics_lib.mesh_peak_flops(mesh, config.train.peak_flops)
    metrics_log = metrics_lib.MetricsLog(
        os.path.join(config.workdir, "sft"), result.total, result.steps, line=_progress
    )
    stop = StopFlag()
    try:
        for s in range(result.steps, result.total):
            t0, compiled = metrics_lib.clock(), metrics_lib.compile_seconds()
            picked = data.order(config.seed, s, cfg.batch_size)
            prompts = [data.prompts[i] for i in picked]
            responses = [data.responses[i] for i in picked]
            longest = max(len(p) + len(r) for p, r in zip(prompts, responses))
            # Rounded up to a multiple of 8: a few shapes (a few compiles) without padding short
            # rows far (the default job's 34-42-token rows would pad to 64 at a multiple of 32).
            length = min(limit, -(-longest // 8) * 8)
            tokens, mask, loss_mask = batch(prompts, responses, length, tokenizer.pad_token_id)
            state, m = step_fn(state, on_mesh(tokens), on_mesh(mask), on_mesh(loss_mask))
            m = {k: float(mesh_lib.to_host(v)) for k, v in m.items()}
            seconds = max(metrics_lib.clock() - t0, 1e-9)
            real = float(mask.sum())
            m |= {
                "sft/tokens_per_s": real / seconds,
                "perf/mfu": 3 * metrics_lib.forward_flops(model.cfg, real) / (seconds * peak),
                "sft/learning_rate": float(rate(s)),
                "time/step": seconds,
                "time/compile": metrics_lib.compile_seconds() - compiled,
            }
            metrics_log.write(s + 1, m)
            result.history.append(m)
            result.steps = s + 1
            result.preempted = stop.requested()
            if result.preempted or s + 1 == result.total or checkpoints.due(s + 1):
                checkpoints.save(
                    s + 1, state, {"phase": "sft", "config": config.to_json_best_effort()}
                )
            if result.preempted:
                log.warning(
                    "SFT stopped after step %d of %d (%s); checkpoint saved",
                    s + 1,
                    result.total,
                    result.preempted,
                )
                break
    finally:
        stop.restore()
        checkpoints.wait()
        metrics_log.close()
    return state


def _progress(m: dict) -> str:
    return (
        f"SFT loss {m['sft/loss']:.4f} lr {m['sft/learning_rate']:.2e} | "
        f"{m['sft/tokens_per_s']:,.0f} tok/s, MFU {m['perf/mfu']:.1%}"
    )
