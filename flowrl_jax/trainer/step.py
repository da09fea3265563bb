"""The training phases as pure functions of arrays (jit them with the static pieces bound by
`functools.partial`): `score` (reference log-probs and old values, no gradient), `prepare` (the
algorithm's advantages) and `update` (forward, the registered loss, one optimiser step, the gradient
accumulated over `StepSpec.micro_batches`); `updates` runs every optimiser step of a rollout batch
(epochs x mini-batches), and `jit_updates` compiles it with explicit shardings (`state_shardings`)
and the state donated.

No branch per algorithm: the step asks the algorithm which inputs it needs (reference log-probs,
log Z, values) and hands every loss the same `algorithms.Batch`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.sharding import Mesh
from ml_collections import ConfigDict

from flowrl_jax import algorithms
from flowrl_jax import mesh as mesh_lib
from flowrl_jax import rules as R
from flowrl_jax.algorithms import heads
from flowrl_jax.models import lora, partition
from flowrl_jax.models.decoder import constrain_batch
from flowrl_jax.models.families import DecoderConfig
from flowrl_jax.models.model import forward, forward_packed
from flowrl_jax.rollout.logprobs import logprobs_from_hidden, token_logprobs
from flowrl_jax.trainer import micro, packing

SCHEDULES = ("constant", "cosine")


def default_config() -> ConfigDict:
    """config.optimizer: the AdamW optimiser and its learning-rate schedule (`make_optimizer`)."""
    return ConfigDict(
        {
            "learning_rate": 1e-6,  # paper (Qwen2.5-7B math)
            # Linear warm-up over this many optimiser steps (paper), the first at 1/warmup_steps
            # of the rate (learning_rate_schedule).
            "warmup_steps": 10,
            # After the warm-up: 'constant' (paper) or 'cosine' decay to min_lr_ratio x the rate at
            # the run's last optimiser step (make_optimizer's total_steps).
            "schedule": "constant",
            "min_lr_ratio": 0.0,  # the cosine's floor as a fraction of the peak (verl's default)
            "weight_decay": 0.1,  # AdamW (paper)
            "grad_clip": 1.0,  # global norm over all parameters, heads included (paper)
        }
    )


RULES = {
    "learning_rate": R.NON_NEGATIVE,
    "warmup_steps": R.COUNT,
    "schedule": R.OneOf(SCHEDULES),
    "min_lr_ratio": R.FRACTION,
    "weight_decay": R.NON_NEGATIVE,
    "grad_clip": R.POSITIVE,
}


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
    # Gradient accumulation: `update` runs the mini-batch as this many micro-batches in a scan, so
    # it holds one micro-batch's activations; the result equals one pass over the mini-batch.
    micro_batches: int = 1
    # Packing (trainer/packing.py): sequences laid end to end in rows of pack_len tokens,
    # pack_rows rows per micro-batch; micro_batches is then unused. 0: no packing.
    pack_len: int = 0
    pack_rows: int = 0

    @property
    def alg(self) -> algorithms.Algorithm:
        return algorithms.get(self.algorithm)

    def layout(self, sequences: int) -> packing.Layout:
        return packing.Layout.for_batch(sequences, self.pack_len, self.pack_rows)


# --- optimiser ---


def learning_rate_schedule(cfg: ConfigDict, peak: float, total_steps: int | None = None):
    """optimiser step s (from 0) -> learning rate: a linear warm-up, peak * (s + 1) / W for the
    first W = cfg.warmup_steps steps (the first step already moves the weights: a warm-up from 0
    would make it a no-op), then constant or a cosine from the peak at step W down to
    cfg.min_lr_ratio x peak at `total_steps`."""
    warmup = max(cfg.warmup_steps, 1)
    schedule = cfg.get("schedule", "constant")
    if schedule == "constant":
        after = optax.constant_schedule(peak)
    elif schedule != "cosine":
        raise ValueError(f"optimizer.schedule={schedule!r}; known: {', '.join(SCHEDULES)}")
    elif total_steps is None:
        raise ValueError(
            "optimizer.schedule='cosine' decays over the run: make_optimizer needs total_steps, "
            "the run's optimiser steps (train.steps x train.epochs x mini-batches per rollout batch)"
        )
    elif not 0.0 <= cfg.min_lr_ratio <= 1.0:
        raise ValueError(f"optimizer.min_lr_ratio={cfg.min_lr_ratio} must be in [0, 1]")
    elif total_steps <= warmup:
        # A smoke run (train.steps=2 on the default job) ends inside the warm-up: it runs the
        # ramp alone, which is what its steps would have had in the full run.
        logging.warning(
            "optimizer.schedule='cosine': the run's %d optimiser steps end inside "
            "optimizer.warmup_steps=%d; the cosine never starts",
            total_steps,
            cfg.warmup_steps,
        )
        after = optax.constant_schedule(peak)
    else:
        after = optax.warmup_cosine_decay_schedule(
            0.0, peak, warmup, total_steps, end_value=peak * cfg.min_lr_ratio
        )

    def rate(step):
        return jnp.where(step < warmup, peak * (step + 1) / warmup, after(step))

    return rate


def make_optimizer(
    cfg: ConfigDict, heads_cfg: ConfigDict | None, total_steps: int | None = None
) -> optax.GradientTransformation:
    """Global-norm clip, then AdamW on `learning_rate_schedule`. total_steps: the run's optimiser
    steps, needed by the cosine schedule only. heads_cfg None: no heads (SFT)."""

    def adamw(lr):
        return optax.adamw(
            learning_rate_schedule(cfg, lr, total_steps), weight_decay=cfg.weight_decay
        )

    inner = adamw(cfg.learning_rate)
    if (
        heads_cfg is not None and heads_cfg.logz.learning_rate > 0
    ):  # the log-Z head at its own rate, same clip and decay
        labels = lambda params: {k: "logz" if k == "logz_head" else "main" for k in params}
        inner = optax.multi_transform(
            {"main": inner, "logz": adamw(heads_cfg.logz.learning_rate)}, labels
        )
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), inner)


def optimizer_shapes(cfg: ConfigDict, heads_cfg: ConfigDict | None) -> optax.GradientTransformation:
    """An optimiser whose state has the structure of `make_optimizer(cfg, heads_cfg, N)` for every
    run length N (a schedule's length shapes no state): what reading a checkpoint needs when the
    run's optimiser step count is not at hand. Its rates are not the run's: never step with it."""
    return make_optimizer(cfg, heads_cfg, total_steps=max(cfg.warmup_steps, 1) + 2)


def init_state(spec: StepSpec, policy_params, optimizer, rng) -> TrainState:
    """The state before the first step; with LoRA adapters in `policy_params` the optimiser's
    state covers only what is trained (`lora.split`)."""
    alg = spec.alg
    head_rng, rng = jax.random.split(rng)
    params = {"policy": policy_params} | heads.init(
        head_rng, spec.model.hidden_size, spec.heads_cfg, alg.needs_logz, alg.needs_values
    )
    return TrainState(jnp.int32(0), params, optimizer.init(lora.split(params)[0]), rng)


# --- phases ---
#
# One RL step, whether phased (trainer/loop.py jits each phase) or fused (trainer/fused.py composes
# them in one program): sample (rollout.generate) -> reward (the task's) -> `rollout_batch` (the
# record every later phase reads) -> `score_rollout` -> `prepare` -> `update` per mini-batch.

SAMPLE, UPDATE = 1, 2  # the phases that draw random numbers, as ids in their keys


def phase_key(rng, step, phase: int, attempt=0):
    """The key of `phase` at optimiser step `step`: fold_in(fold_in(fold_in(rng, step), phase),
    attempt). attempt: the rollout batch within one RL step (dynamic sampling draws several)."""
    base = jax.random.fold_in(rng, step)
    return jax.random.fold_in(jax.random.fold_in(base, phase), attempt)


def rollout_batch(out, rewards, n: int):
    """The record of one rollout: (tokens, mask [R, P + N] prompt and response joined, the Batch's
    rollout fields). out: a SampleOutput of R = G x n rows, group g in rows g*n .. g*n + n - 1;
    rewards [R]. numpy in, numpy out; traced in, traced out."""
    xp = np if isinstance(out.tokens, np.ndarray) else jnp
    tokens, mask = out.sequences()
    R = out.tokens.shape[0]
    batch = algorithms.Batch(
        old_logp=out.logprobs,  # the sampler's log-probs equal a recomputation (tested)
        mask=out.mask.astype(xp.float32),
        rewards=rewards.astype(xp.float32),
        group=xp.repeat(xp.arange(R // n, dtype=xp.int32), n),
    )
    return tokens, mask, batch


def _values(spec: StepSpec, params, hidden, first=None):
    """V(s_t) for the tokens from column `first` on (default: the response): the hidden state
    that predicts token t."""
    first = spec.prompt_len if first is None else first
    h = hidden[:, first - 1 : -1]  # [B, N, D]
    if spec.heads_cfg.value.detach_backbone:
        h = jax.lax.stop_gradient(h)
    return heads.ValueHead().apply({"params": params["value_head"]}, h)


def _packed_values(spec: StepSpec, params, hidden):
    """`_values` of every slot of packed rows [rows, T] (a row's first slot, never a response
    token, gets 0)."""
    return jnp.pad(_values(spec, params, hidden, first=1), ((0, 0), (1, 0)))


def reference_policy(params, ref_params):
    """The reference policy's parameters. Without LoRA, `ref_params` are its own (the initial
    weights, held beside the state). With LoRA adapters in params["policy"], `ref_params` holds
    only the reference's own adapters (an empty tree: none), and the reference is the policy's
    frozen base with them: no second copy of the base weights, and none passed into a program
    that donates the state."""
    policy = params["policy"]
    if not lora.adapted(policy):
        return ref_params
    return lora.with_adapters(lora.base(policy), lora.flat(ref_params))


def score(spec: StepSpec, params, ref_params, tokens, mask):
    """Inputs of `prepare` that need a forward and no gradient: (ref log-probs [B, N] or None, old
    values [B, N] or None). tokens, mask [B, P + N]."""
    P = spec.prompt_len
    ref = None
    if spec.alg.needs_ref(spec.algo_cfg):
        ref_params = reference_policy(params, ref_params)
        ref = token_logprobs(spec.model, ref_params, tokens, mask, spec.temperature, spec.chunk)
        ref = ref[:, P:]
    values = None
    if spec.alg.needs_values:
        hidden = forward(spec.model, params["policy"], tokens, mask, return_logits=False).hidden
        values = _values(spec, params, hidden)
    return ref, values


def score_rollout(spec: StepSpec, params, ref_params, tokens, mask, block: int):
    """`score` over a whole rollout batch, strided blocks of `block` rows (a micro-batch's) one
    after another (the update's memory bound holds for the scoring forward too; each block holds
    rows of every device's share), or packed micro-batches (spec.pack_len) -> (ref log-probs
    [R, N] or None, old values [R, N] or None)."""
    if spec.pack_len:
        return _score_packed(spec, params, ref_params, tokens, mask)
    chunks = tokens.shape[0] // block
    pieces = jax.tree.map(functools.partial(micro.split_rows, chunks), (tokens, mask))
    _, parts = micro.loop(lambda _, j, x: (None, score(spec, params, ref_params, *x)), None, pieces)
    return tuple(None if x is None else micro.merge_rows(chunks, x) for x in parts)


def _score_packed(spec: StepSpec, params, ref_params, tokens, mask):
    P, cfg = spec.prompt_len, spec.model
    ref_params = reference_policy(params, ref_params)
    packed = packing.pack(tokens, mask, spec.layout(tokens.shape[0]), P)

    def body(_, j, x):
        t, pos, seg, _ = x
        out = {}
        if spec.alg.needs_ref(spec.algo_cfg):
            hidden = forward_packed(cfg, ref_params, t, pos, seg).hidden
            out["ref"] = logprobs_from_hidden(
                cfg, ref_params, hidden, t, spec.temperature, spec.chunk
            )
        if spec.alg.needs_values:
            hidden = forward_packed(cfg, params["policy"], t, pos, seg).hidden
            out["values"] = _packed_values(spec, params, hidden)
        return None, out

    _, out = micro.loop(body, None, _pieces(packed), packed.used)
    return tuple(
        packing.unpack(out[k], packed.index, P) if k in out else None for k in ("ref", "values")
    )


def _pieces(packed: packing.Packed):
    return (packed.tokens, packed.positions, packed.segments, packed.pooled)


def prepare(spec: StepSpec, batch: algorithms.Batch) -> algorithms.Batch:
    return spec.alg.prepare(batch, spec.algo_cfg)


def policy_outputs(spec: StepSpec, params, tokens, mask, rows, rng, dropout=None) -> dict:
    """The Batch fields the current parameters compute, differentiable: logp [B, N], entropy [B, N]
    (detached), and logz [B] / values [B, N] where the algorithm has them. tokens, mask [B, P + N];
    rows [B] int: each row's index in the mini-batch, which seeds its log-Z dropout, so a row's
    mask does not depend on which micro-batch it is in. dropout: LoRA dropout's key, or None."""
    P = spec.prompt_len
    policy = params["policy"]
    hidden = forward(spec.model, policy, tokens, mask, return_logits=False, dropout=dropout).hidden
    logp, entropy = logprobs_from_hidden(
        spec.model, policy, hidden, tokens, spec.temperature, spec.chunk, True
    )
    out = {"logp": logp[:, P:], "entropy": jax.lax.stop_gradient(entropy[:, P:])}
    if spec.alg.needs_logz:
        keys = jax.vmap(lambda r: jax.random.fold_in(rng, r))(rows)  # [B]: each row's own
        zc = spec.heads_cfg.logz
        out["logz"] = heads.logz(params["logz_head"], hidden[:, :P], mask[:, :P], zc, keys)
    if spec.alg.needs_values:
        out["values"] = _values(spec, params, hidden)
    return out


def check_micro_batches(minibatch: int, micro_batches: int, mesh: Mesh | None = None) -> int:
    """Refuse a split that cannot work (before anything compiles). Returns the rows per
    micro-batch."""
    if micro_batches < 1:
        raise ValueError(f"train.micro_batches={micro_batches} must be >= 1")
    if minibatch % micro_batches:
        raise ValueError(
            f"train.micro_batches={micro_batches} does not divide the mini-batch of {minibatch} "
            "rows (train.minibatch_size): every micro-batch must have the same number of rows"
        )
    rows = minibatch // micro_batches
    if mesh is not None:
        mesh_lib.check_batch(rows, mesh, "train.minibatch_size / train.micro_batches")
    return rows


def lora_dropout_key(spec: StepSpec, rng, j):
    """Micro-batch j's key for LoRA dropout (its own stream of the update's key, apart from the
    rows' log-Z dropout keys), or None where the model has none."""
    if not spec.model.lora_dropout:
        return None
    return jax.random.fold_in(jax.random.fold_in(rng, LORA_DROPOUT_STREAM), j)


LORA_DROPOUT_STREAM = 2**31 - 1  # never a row index


def _micro_batch_loss(spec: StepSpec, params, tokens, mask, batch, rows, rng, count, dropout):
    """The algorithm's loss total on one micro-batch over the mini-batch's count (its share of the
    mini-batch's loss) -> (that share, policy_outputs)."""
    outputs = policy_outputs(spec, params, tokens, mask, rows, rng, dropout)
    total, _, _ = spec.alg.loss_terms(batch._replace(**outputs), spec.algo_cfg)
    return total / count, outputs


def loss_count(spec: StepSpec, batch: algorithms.Batch):
    """The mini-batch's count (`loss_terms`' second value, at least 1), known before the update:
    the count does not depend on the parameters, so the rollout's own values stand in for the
    current parameters' outputs, and the program keeps only what the count reads."""
    stand_in = {"logp": batch.old_logp, "entropy": jnp.zeros_like(batch.old_logp)}
    if spec.alg.needs_logz:
        stand_in["logz"] = jnp.zeros(batch.mask.shape[:1], jnp.float32)
    if spec.alg.needs_values:
        stand_in["values"] = batch.old_values
    _, count, _ = spec.alg.loss_terms(batch._replace(**stand_in), spec.algo_cfg)
    return jnp.maximum(count, 1.0)


def update(spec: StepSpec, optimizer, state: TrainState, tokens, mask, batch: algorithms.Batch):
    """One optimiser step on a mini-batch. tokens, mask [B, P + N]; batch: the prepared
    response-aligned arrays (logp is filled here). -> (state, metrics).

    The loss is total / count (`Algorithm.loss_terms`): the gradient of each micro-batch's total
    over the mini-batch's count (`loss_count`) is summed in a loop (trainer/micro.py: one
    micro-batch's activations live at a time), so it equals the gradient of one pass for any
    reduction of that form. Micro-batches are strided rows, or packed rows (spec.pack_len).
    The loss, count and metrics are computed once on the whole mini-batch from the per-row outputs
    the loop collected: equal to one pass's too."""
    rng = phase_key(state.rng, state.step, UPDATE)
    count = loss_count(spec, batch)
    gradients = _packed_gradients if spec.pack_len else _strided_gradients
    # With LoRA only the adapters and heads are differentiated and stepped (lora.split); the
    # frozen base is an input of the loss, with no gradient and no optimiser state.
    trainable, frozen = lora.split(state.params)
    grads, outputs = gradients(spec, trainable, frozen, tokens, mask, batch, rng, count)
    total, _, metrics = spec.alg.loss_terms(batch._replace(**outputs), spec.algo_cfg)
    params, opt_state, grads = apply_gradients(optimizer, state.opt_state, grads, trainable, frozen)
    metrics = metrics | {"loss": total / count, "grad_norm": optax.tree.norm(grads)}
    return TrainState(state.step + 1, params, opt_state, state.rng), metrics


def apply_gradients(optimizer, opt_state, grads, trainable, frozen):
    """One optimiser step on `trainable` (`lora.split(params)`) -> (the new params, `frozen`
    joined back unchanged; the optimiser state; the gradients as stepped: float32 `grads` cast
    to the parameters' dtypes, what the gradient norm is logged of)."""
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, trainable)
    updates, opt_state = optimizer.update(grads, opt_state, trainable)
    return lora.join(optax.apply_updates(trainable, updates), frozen), opt_state, grads


def updates(
    spec: StepSpec,
    optimizer,
    minibatch: int,
    epochs: int,
    state,
    tokens,
    mask,
    batch,
    shardings=None,
):
    """Every optimiser step of a rollout batch: `epochs` passes over its mini-batches of
    `minibatch` rows (consecutive rows, groups whole), each an `update`, in a `lax.scan`. The
    phased loop and the fused step both run this. shardings: the state's (state_shardings), kept
    by the loop's carry. -> (state, the metrics averaged over the steps)."""

    def minibatches(x):  # [R, ...] -> [R // minibatch, minibatch, ...]
        return x.reshape(x.shape[0] // minibatch, minibatch, *x.shape[1:])

    xs = jax.tree.map(minibatches, (tokens, mask, batch))

    # Left to themselves, the partitioner may split a mini-batch's rows over fewer devices than
    # the data-parallel ones, or carry the state in another layout, and gather each weight whole
    # to match, every step: both are pinned.
    def keep(state):
        return state if shardings is None else jax.lax.with_sharding_constraint(state, shardings)

    def one_step(state, x):
        x = jax.tree.map(constrain_batch, x)
        state, metrics = update(spec, optimizer, keep(state), *x)
        return keep(state), metrics

    def one_epoch(state, _):
        return jax.lax.scan(one_step, state, xs)

    state, metrics = jax.lax.scan(one_epoch, state, None, length=epochs)
    return state, jax.tree.map(lambda m: jnp.mean(m, axis=(0, 1)), metrics)


def _strided_gradients(spec: StepSpec, params, frozen, tokens, mask, batch, rng, count):
    """micro_batches strided shares of the rows -> (summed gradients of `params`, per-row outputs
    [B, ...]). frozen: the rest of the parameters (`lora.split`), or None."""
    B = tokens.shape[0]
    k = spec.micro_batches
    check_micro_batches(B, k)
    rows = jnp.arange(B, dtype=jnp.int32)
    pieces = jax.tree.map(functools.partial(micro.split_rows, k), (tokens, mask, batch, rows))

    def loss(p, j, x):
        dropout = lora_dropout_key(spec, rng, j)
        return _micro_batch_loss(spec, lora.join(p, frozen), *x, rng, count, dropout)

    _, grads, outputs = micro.gradients(loss, params, pieces)
    return grads, jax.tree.map(functools.partial(micro.merge_rows, k), outputs)


def _packed_gradients(spec: StepSpec, params, frozen, tokens, mask, batch, rng, count):
    """The mini-batch packed (trainer/packing.py), one micro-batch of packed rows at a time ->
    (summed gradients, per-row outputs [B, ...]). Micro-batch j's loss is the algorithm's total
    over the sequences it holds: the others are masked out, their outputs the rollout's own."""
    P, B = spec.prompt_len, tokens.shape[0]
    zc = spec.heads_cfg.logz
    drop_last = spec.alg.needs_logz and zc.drop_last_prompt_token
    packed = packing.pack(tokens, mask, spec.layout(B), P, drop_last)
    keys = None
    if spec.alg.needs_logz:  # each sequence's dropout key, as policy_outputs gives its row
        keys = jax.vmap(lambda r: jax.random.fold_in(rng, r))(jnp.arange(B, dtype=jnp.int32))
    stand_in = {"logp": batch.old_logp, "entropy": jnp.zeros_like(batch.old_logp)}
    if spec.alg.needs_values:
        stand_in["values"] = batch.old_values

    def loss(p, j, x):
        dropout = lora_dropout_key(spec, rng, j)
        out = _packed_outputs(spec, lora.join(p, frozen), x, keys, B, dropout)
        mine = packed.micro == j
        fields = {
            k: jnp.where(mine[:, None], packing.unpack_micro(out[k], packed, j, P), v)
            for k, v in stand_in.items()
        }
        if "logz" in out:
            out["logz"] = fields["logz"] = jnp.where(mine, out["logz"], 0.0)
        sub = batch._replace(mask=batch.mask * mine[:, None], **fields)
        total, _, _ = spec.alg.loss_terms(sub, spec.algo_cfg)
        return total / count, out

    _, grads, out = micro.gradients(loss, params, _pieces(packed), packed.used)
    outputs = {k: packing.unpack(out[k], packed.index, P) for k in stand_in}
    if "logz" in out:
        outputs["logz"] = out["logz"].sum(0)  # each sequence's from its own micro-batch
    return grads, outputs


def _packed_outputs(spec: StepSpec, params, piece, keys, sequences: int, dropout=None) -> dict:
    """`policy_outputs` on one micro-batch of packed rows: logp, entropy (and values) per slot
    [rows, T], log Z [sequences] (meaningful for the sequences in these rows)."""
    tokens, positions, segments, pooled = piece
    policy = params["policy"]
    hidden = forward_packed(spec.model, policy, tokens, positions, segments, dropout).hidden
    logp, entropy = logprobs_from_hidden(
        spec.model, policy, hidden, tokens, spec.temperature, spec.chunk, True
    )
    out = {"logp": logp, "entropy": jax.lax.stop_gradient(entropy)}
    if spec.alg.needs_logz:
        pooled = packing.pool(hidden, pooled, sequences)
        out["logz"] = heads.logz_pooled(params["logz_head"], pooled, spec.heads_cfg.logz, keys)
    if spec.alg.needs_values:
        out["values"] = _packed_values(spec, params, hidden)
    return out


# --- shardings ---


def param_shardings(mesh: Mesh, params, family: str):
    """NamedShardings for params {'policy', 'logz_head'?, 'value_head'?}: the policy by the family's
    partition rules, the heads by partition.HEAD_RULES. A parameter no rule matches is an error."""
    policy = partition.shardings(partition.rules_for(family), params["policy"], mesh)
    rest = {k: v for k, v in params.items() if k != "policy"}
    return {"policy": policy} | partition.shardings(partition.HEAD_RULES, rest, mesh)


def state_shardings(mesh: Mesh, abstract_state: TrainState, family: str) -> TrainState:
    """A TrainState of NamedShardings for `abstract_state` (arrays or ShapeDtypeStructs, e.g.
    `jax.eval_shape(init_state, ...)`): parameters by partition rules; an optimiser-state leaf
    whose key path ends in a parameter's path, with that parameter's shape (Adam's mu and nu, under
    any chain or multi_transform nesting), as that parameter; the rest (step counts), the step and
    the PRNG key replicated."""
    replicated = mesh_lib.replicated(mesh)
    params = param_shardings(mesh, abstract_state.params, family)
    by_path = {
        tuple(path): (leaf.shape, sharding)
        for (path, leaf), sharding in zip(
            jax.tree_util.tree_leaves_with_path(abstract_state.params),
            jax.tree.leaves(params),
            strict=True,
        )
    }
    longest = max(map(len, by_path), default=0)

    def like_its_parameter(path, leaf):
        for n in range(min(len(path), longest), 0, -1):
            shape, sharding = by_path.get(tuple(path[-n:]), (None, None))
            if shape == leaf.shape:
                return sharding
        return replicated

    opt_state = jax.tree_util.tree_map_with_path(like_its_parameter, abstract_state.opt_state)
    return TrainState(replicated, params, opt_state, replicated)


def placed(tree, shardings):
    """ShapeDtypeStructs of `tree`'s arrays (or shapes) carrying `shardings`: abstract arguments
    that lower and restore exactly where the trainer puts the real ones."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


def jit_score(spec: StepSpec, block: int):
    """`score_rollout` compiled for one prompt bucket: (params, ref_params, tokens, mask) ->
    (ref log-probs or None, old values or None); shardings follow the inputs."""
    return jax.jit(functools.partial(score_rollout, spec, block=block))


def jit_prepare(spec: StepSpec):
    """`prepare` compiled: batch -> batch with the algorithm's advantages (and returns)."""
    return jax.jit(functools.partial(prepare, spec))


def jit_updates(spec: StepSpec, optimizer, minibatch: int, epochs: int, mesh, state_sharding):
    """`updates` compiled with explicit shardings, the state donated:
    (state, tokens, mask, batch) -> (state, metrics). Call it under `jax.set_mesh(mesh)`."""
    # Every batch input is [R] or [R, ...]: one spec over the leading axis covers them all.
    rows = mesh_lib.batch_sharding(mesh, ndim=1)
    return jax.jit(
        functools.partial(updates, spec, optimizer, minibatch, epochs, shardings=state_sharding),
        in_shardings=(
            state_sharding,  # state: by partition rules (state_shardings)
            rows,  # tokens [R, P + N]: rows over the data-parallel axes (data x fsdp)
            rows,  # mask [R, P + N]: likewise
            rows,  # batch: every field [R] or [R, N], rows split the same way
        ),
        out_shardings=(
            state_sharding,  # the new state where the old one was, so the donation reuses it
            mesh_lib.replicated(mesh),  # metrics: scalars, a copy on every device
        ),
        donate_argnums=0,  # the state: its buffers become the new state's (no second copy)
    )
