"""One RL step, phase by phase: sample a group per prompt (jitted), reward the responses on the host
(a thread pool), compute reference log-probs and old values (jitted), the algorithm's advantages,
then optimiser steps over mini-batches of whole groups (jitted, state donated). Host Python does the
rewards and the bookkeeping, nothing that compiles. Each phase is timed; `trainer/run.py` drives the
steps, checkpoints and logs.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from flowrl_jax import algorithms
from flowrl_jax import mesh as mesh_lib
from flowrl_jax import rules as R
from flowrl_jax.models import lora
from flowrl_jax.rollout import SampleOutput
from flowrl_jax.rollout import sampler as sampler_lib
from flowrl_jax.tasks import Task, prompt_limit
from flowrl_jax.trainer import fused
from flowrl_jax.trainer import metrics as metrics_lib
from flowrl_jax.trainer import step as step_lib
from flowrl_jax.trainer.data import shard_count
from flowrl_jax.trainer.rewards import Rewards

log = logging.getLogger(__name__)


FUSED = {"auto": "auto", "true": True, "false": False}  # train.fused (any case) -> the choice


def default_config() -> ConfigDict:
    return ConfigDict(
        {
            "steps": 2,  # RL steps (rollout batches) to run
            "prompts_per_step": 2,  # prompts per rollout batch (paper: 512)
            # Sequences per optimiser step, a multiple of rollout.n so groups stay whole (paper: 32
            # prompts x 8); 0 = the whole rollout batch in one step.
            "minibatch_size": 0,
            "epochs": 1,  # passes over each rollout batch
            # Gradient accumulation: each mini-batch runs as this many equal micro-batches in one
            # compiled scan (memory: one micro-batch's activations); the update is the same.
            "micro_batches": 1,
            # Packing (trainer/packing.py): scoring and the update lay the sequences end to end in
            # rows of this many tokens, at least the longest prompt bucket + max_new_tokens, and
            # pay for real tokens instead of padding; 0 = off (rows padded to the bucket).
            "pack_length": 0,
            # Tokens per packed micro-batch (a multiple of pack_length whose rows the mesh's
            # data-parallel devices share); micro-batches then come by token count, as many as
            # the batch's tokens need, and micro_batches is unused. 0 = one row per device.
            # The last micro-batch's empty rows cost as much as full ones: smaller wastes less.
            "micro_batch_tokens": 0,
            "shuffle": True,  # draw prompts in a seeded random order per epoch of the dataset
            "reward_workers": 8,  # host threads scoring responses
            # Seconds a rollout batch's host rewards may take before the step stops with an error
            # naming the reward function (a hung reward must not hang training); 0 = no limit.
            "reward_timeout": 600.0,
            # One compiled program per RL step (trainer/fused.py) instead of one per phase:
            # "auto" fuses when dynamic sampling is off, the prompts fill the sampler's batch
            # bucket and the reward is compiled or (on one process) a host function called from
            # the program; "true" insists (an error says why not);
            # "false" keeps the phased loop. Same checkpoints and resume either way.
            "fused": "auto",
            # The fused step's per-phase times (time/rollout, ...): the program calls the host as
            # each phase's output is ready, and the next phase waits for the call (five scalar
            # host round trips a step). Off: the fused step reports time/step only. "auto": on
            # the CPU only (host calls keep a program out of the compilation cache).
            "fused_phase_times": "auto",
            # JAX's persistent compilation cache (trainer/compile_cache.py): "" = <workdir>/
            # compile_cache (or $JAX_COMPILATION_CACHE_DIR), a directory the hosts share, or "off".
            "compile_cache": "",
            # FLOP/s of one device for MFU; 0 = the data sheet's bf16 figure for TPUs and GPUs, a
            # measured fp32 matmul on the CPU
            "peak_flops": 0.0,
        }
    )


RULES = {
    "steps": R.COUNT,
    "prompts_per_step": R.POSITIVE_INT,
    "minibatch_size": R.COUNT,  # 0 = the whole rollout batch
    "epochs": R.POSITIVE_INT,
    "micro_batches": R.POSITIVE_INT,
    "pack_length": R.COUNT,  # 0 = off
    "micro_batch_tokens": R.COUNT,  # 0 = one packed row per data-parallel device
    "reward_workers": R.POSITIVE_INT,
    "reward_timeout": R.POSITIVE,
    "fused": R.OneOf(tuple(FUSED), fold_case=True),
    "fused_phase_times": R.OneOf(tuple(FUSED), fold_case=True),
    "peak_flops": R.NON_NEGATIVE,  # 0 = measured
}


def minibatch_size(config: ConfigDict) -> int:
    """Sequences per optimiser step: train.minibatch_size, or (0) the whole rollout batch."""
    return config.train.minibatch_size or config.train.prompts_per_step * config.rollout.n


def check_sizes(config: ConfigDict, mesh) -> int:
    """Refuse sizes that cannot work, before anything compiles (run.check calls it once per run).
    Returns the mini-batch size."""
    alg = algorithms.get(config.algorithm.name)  # an unknown name lists the known ones
    if alg.check is not None:
        alg.check(config.algorithm[config.algorithm.name], config.rollout)
    n, t = config.rollout.n, config.train
    rollout = t.prompts_per_step * n
    size = minibatch_size(config)
    if size % n:
        raise ValueError(
            f"train.minibatch_size={size} is not a multiple of the group size rollout.n={n}: "
            "each group must stay whole in one mini-batch"
        )
    if rollout % size:
        raise ValueError(
            f"train.minibatch_size={size} does not divide the rollout batch "
            f"train.prompts_per_step x rollout.n = {rollout}"
        )
    mesh_lib.check_batch(size, mesh, "train.minibatch_size")
    shards = shard_count(config.task.data_shards, jax.process_count())
    if t.prompts_per_step % shards:
        raise ValueError(
            f"train.prompts_per_step={t.prompts_per_step} does not split over {shards} data shards "
            f"(task.data_shards={config.task.data_shards})"
        )
    step_lib.check_micro_batches(size, t.micro_batches, mesh)
    packing_of(config, mesh)
    return size


def packing_of(config: ConfigDict, mesh) -> tuple[int, int]:
    """(tokens per packed row, packed rows per micro-batch) from train.pack_length and
    train.micro_batch_tokens; (0, 0) without packing. Refuses a budget that cannot work."""
    t, r = config.train, config.rollout
    if not t.pack_length:
        return 0, 0
    prompt = sampler_lib.bucket_of(prompt_limit(config), r.prompt_buckets)
    if t.pack_length < prompt:
        raise ValueError(
            f"train.pack_length={t.pack_length} is smaller than the longest prompt the run takes "
            f"({prompt} tokens: task.max_prompt_len's prompt bucket)"
        )
    if t.pack_length < prompt + r.max_new_tokens:
        raise ValueError(
            f"train.pack_length={t.pack_length} cannot hold the longest sequence the run can "
            f"sample: a {prompt}-token prompt and rollout.max_new_tokens={r.max_new_tokens} make "
            f"{prompt + r.max_new_tokens}; a sequence is never split over packed rows"
        )
    unit = mesh_lib.batch_size_divisor(mesh)
    tokens = t.micro_batch_tokens or t.pack_length * unit
    if tokens % t.pack_length or (tokens // t.pack_length) % unit:
        raise ValueError(
            f"train.micro_batch_tokens={tokens} is not a whole number of packed rows of "
            f"train.pack_length={t.pack_length} tokens that the {unit} data-parallel devices "
            f"share evenly (use a multiple of {t.pack_length * unit})"
        )
    return t.pack_length, tokens // t.pack_length


def step_spec(config: ConfigDict, model_cfg, prompt_len: int, mesh) -> step_lib.StepSpec:
    """The RL step's static pieces for one prompt bucket, as every builder of its programs (the
    Trainer, lower.py) makes them."""
    name = config.algorithm.name
    temperature = config.rollout.temperature
    pack_len, pack_rows = packing_of(config, mesh)
    return step_lib.StepSpec(
        model_cfg,
        name,
        config.algorithm[name],
        config.heads,
        prompt_len,
        temperature if temperature > 0 else 1.0,
        micro_batches=config.train.micro_batches,
        pack_len=pack_len,
        pack_rows=pack_rows,
    )


def optimizer_steps(config: ConfigDict) -> int:
    """Optimiser steps in the whole run (the cosine schedule decays over them)."""
    t = config.train
    rollout = t.prompts_per_step * config.rollout.n
    return t.steps * t.epochs * (rollout // minibatch_size(config))


def platform_of(mesh) -> str:
    """The mesh's device platform: "cpu", "tpu" or "gpu" (an AbstractMesh, from the lowering
    check, carries none: "cpu")."""
    devices = getattr(mesh, "devices", None)
    return devices.flat[0].platform if devices is not None else "cpu"


def why_not_fused(config: ConfigDict, reward_compiled: bool, batch_bucket) -> str | None:
    """Why this run's RL step cannot be one program (None: it can). batch_bucket(k): the sampler's
    batch bucket for k prompts on the run's mesh."""
    if not reward_compiled and jax.process_count() > 1:
        return "a host reward inside the program runs on one process only"
    name = config.algorithm.name
    if algorithms.get(name).group_filter(config.algorithm[name]):
        return "dynamic sampling (DAPO) refills on the host"
    k = config.train.prompts_per_step
    if batch_bucket(k) != k:
        return (
            f"train.prompts_per_step={k} does not fill the sampler's batch bucket "
            f"({batch_bucket(k)} on this mesh)"
        )
    return None


def choose_fused(
    config: ConfigDict, reward_compiled: bool, batch_bucket, platform: str
) -> tuple[bool, str | None]:
    """train.fused resolved for this run -> (fused, why not). "auto" on a TPU or GPU keeps a host
    reward out of the program: a program that calls the host is neither written to the compilation
    cache nor checked ahead by `flowrl_jax.lower`; "true" insists (a host reward then runs as a
    callback there too)."""
    setting = FUSED.get(str(config.train.fused).lower())
    if setting is None:  # run.check refuses it first; a Trainer built directly, here
        raise ValueError(
            f"train.fused={config.train.fused!r} is not allowed: expected "
            f"{RULES['fused'].describe()}"
        )
    if setting is False:
        return False, None
    why = why_not_fused(config, reward_compiled, batch_bucket)
    if setting is True and why:
        raise ValueError(f"train.fused=true, but the fused step cannot run: {why}")
    if why is None and setting == "auto" and platform != "cpu" and not reward_compiled:
        why = f"the task's reward runs on the host: on {platform} the programs stay callback-free"
    return why is None, why


def phase_times(config: ConfigDict, platform: str) -> bool:
    """train.fused_phase_times resolved: "auto" marks phases on the CPU only (on a TPU or GPU the
    marks' host calls would keep the fused program out of the compilation cache)."""
    setting = FUSED[str(config.train.fused_phase_times).lower()]
    return platform == "cpu" if setting == "auto" else setting


class Trainer:
    """Holds the train state, the frozen reference parameters and the compiled phases."""

    def __init__(self, config: ConfigDict, model, tokenizer, mesh, task: Task):
        self.minibatch = minibatch_size(config)  # its sizes are checked once, by run.check
        # LoRA: fresh adapters on the model, or a LoRA warm-up's (then the reference policy
        # keeps a copy of them: they are small). The state takes the model's arrays over (one
        # copy of the weights: `init` donates them), so after it only `self.state` holds them.
        ref_adapters = {}
        if lora.enabled(config.lora):
            if lora.adapted(model.params):
                ref_adapters = jax.tree.map(jnp.copy, lora.adapters(model.params))
            else:
                model = lora.adapt(config.lora, model, config.seed)
        self.config, self.model, self.tokenizer, self.mesh = config, model, tokenizer, mesh
        self.task = task
        self.sampler, self.sp = sampler_lib.from_config(model.cfg, config.rollout, mesh, tokenizer)
        total = optimizer_steps(config)
        self.optimizer = step_lib.make_optimizer(config.optimizer, config.heads, total_steps=total)
        # The policy's rate, logged every step (the log-Z head may have its own).
        self.learning_rate = step_lib.learning_rate_schedule(
            config.optimizer, config.optimizer.learning_rate, total
        )
        # The step's static pieces; each prompt bucket replaces prompt_len (`_spec`).
        self.spec = step_spec(config, model.cfg, 0, mesh)
        init = functools.partial(step_lib.init_state, self.spec, optimizer=self.optimizer)
        rng = jax.random.key(config.seed)
        self.state_sharding = step_lib.state_shardings(
            mesh, jax.eval_shape(init, model.params, rng=rng), model.cfg.family
        )
        # A compiled init writes new buffers: updates donate (overwrite) the state's, while the
        # reference model keeps the initial weights.
        donate = ("policy_params",) if lora.adapted(model.params) else ()
        self.state = jax.jit(init, out_shardings=self.state_sharding, donate_argnames=donate)(
            model.params, rng=rng
        )
        self.ref_params = None
        if self.alg.needs_ref(self.algo_cfg):
            # With LoRA the reference is the state's own base with the warm-up's adapters, or
            # none (step.reference_policy); without, the initial weights, beside the state.
            self.ref_params = ref_adapters if lora.adapted(model.params) else model.params
        self._phases: dict[int, tuple] = {}
        self._fused: dict[int, Callable] = {}
        self._clock = fused.PhaseClock()  # the fused step's phase timestamps
        t = config.train
        self.rewards = Rewards(task, tokenizer, self.sp.n, t.reward_workers, t.reward_timeout)
        self.platform = platform_of(mesh)
        self.fused = self._choose_fused(config.train.fused)
        self.peak, self.peak_source = metrics_lib.mesh_peak_flops(mesh, config.train.peak_flops)

    def _spec(self, prompt_len: int) -> step_lib.StepSpec:
        return dataclasses.replace(self.spec, prompt_len=prompt_len)

    def _compiled(self, prompt_len: int):
        """Jitted (score_rollout, prepare, update) for one prompt bucket."""
        if prompt_len not in self._phases:
            spec = self._spec(prompt_len)
            block = self.minibatch // spec.micro_batches
            self._phases[prompt_len] = (
                step_lib.jit_score(spec, block),
                step_lib.jit_prepare(spec),
                step_lib.jit_updates(
                    spec,
                    self.optimizer,
                    self.minibatch,
                    self.config.train.epochs,
                    self.mesh,
                    self.state_sharding,
                ),
            )
        return self._phases[prompt_len]

    def rollout(self, next_prompts: Callable[[], tuple[list[list[int]], list[int]]], times: dict):
        """Sample and reward one rollout batch of `train.prompts_per_step` groups. Under the
        algorithm's group filter (DAPO's dynamic sampling) the groups it refuses are set aside and
        more prompts drawn, at most `max_rollouts` rollouts; if the batch is still short, refused
        groups fill it (logged).
        next_prompts() -> (token-id lists, dataset rows). -> (out, rewards [R]), group g in rows
        g*n .. g*n + n - 1."""
        want, n = self.config.train.prompts_per_step, self.sp.n
        group_filter = self.alg.group_filter(self.algo_cfg)
        kept, spare = [], []
        attempts = group_filter.max_rollouts if group_filter else 1
        for attempt in range(attempts):
            prompts, rows = next_prompts()
            key = step_lib.phase_key(self.state.rng, self.state.step, step_lib.SAMPLE, attempt)
            t0 = metrics_lib.clock()
            out = self.sampler(self.state.params["policy"], prompts, key, self.sp)
            t1 = metrics_lib.clock()
            rewards = self.rewards(out, np.repeat(rows, n).tolist())
            times["rollout"] += t1 - t0
            times["reward"] += metrics_lib.clock() - t1
            for g in range(len(prompts)):
                part = slice(g * n, (g + 1) * n)
                group = (SampleOutput(*(np.asarray(x)[part] for x in out)), rewards[part])
                keep = group_filter is None or group_filter.keep(rewards[part])
                (kept if keep else spare).append(group)
            if len(kept) >= want:
                break
        if len(kept) < want:
            log.warning(
                "dynamic sampling: the filter kept %d of %d groups after %d rollouts; "
                "refused groups fill the rest",
                len(kept),
                want,
                attempts,
            )
        groups = (kept + spare)[:want]
        P = max(o.prompt_tokens.shape[1] for o, _ in groups)

        def left_pad(x, value):  # rollouts from different prompt buckets: pad to the longest
            return np.pad(x, ((0, 0), (P - x.shape[1], 0)), constant_values=value)

        out = SampleOutput(
            np.concatenate([left_pad(o.prompt_tokens, self.sp.pad_id) for o, _ in groups]),
            np.concatenate([left_pad(o.prompt_mask, 0) for o, _ in groups]),
            *(np.concatenate([getattr(o, f) for o, _ in groups]) for f in SampleOutput._fields[2:]),
        )
        return out, np.concatenate([r for _, r in groups])

    def step(
        self,
        next_prompts: Callable[[], tuple[list[list[int]], list[int]]],
        between_phases: Callable[[], None] = lambda: None,
    ) -> dict:
        """One RL step: sample (and refill), reward, score, prepare, update over mini-batches.
        next_prompts() gives the next `train.prompts_per_step` prompts as token-id lists and their
        dataset rows. between_phases() is called after the reward and after the scoring, before
        the state changes (StopFlag.check: a stop gives the step up there). -> the step's metrics
        (algorithm diagnostics averaged over mini-batches)."""
        t_start, compiled = metrics_lib.clock(), metrics_lib.compile_seconds()
        times = {"rollout": 0.0, "reward": 0.0}
        out, rewards = self.rollout(next_prompts, times)
        between_phases()
        tokens, mask, batch = step_lib.rollout_batch(out, rewards, self.sp.n)
        score, prepare, update = self._compiled(out.prompt_tokens.shape[1])
        on_mesh = lambda x: mesh_lib.to_device(x, mesh_lib.batch_sharding(self.mesh, np.ndim(x)))
        t0 = metrics_lib.clock()
        # Scored a micro-batch of rows at a time: the update's memory bound holds for the scoring
        # forward too, and on the CPU 4 blocks of 16 rows score 1.3x faster than one of 64 (fewer
        # fresh pages; BENCHMARKS.md, issue #5).
        ref, old_values = score(self.state.params, self.ref_params, on_mesh(tokens), on_mesh(mask))
        batch = batch._replace(ref_logp=ref, old_values=old_values)
        batch = jax.tree.map(mesh_lib.to_host, prepare(jax.tree.map(on_mesh, batch)))
        times["logprobs"] = metrics_lib.clock() - t0
        between_phases()
        t0 = metrics_lib.clock()
        self.state, metrics = update(
            self.state, on_mesh(tokens), on_mesh(mask), jax.tree.map(on_mesh, batch)
        )
        metrics = {k: float(mesh_lib.to_host(v)) for k, v in metrics.items()}
        times["update"] = metrics_lib.clock() - t0
        times["step"] = metrics_lib.clock() - t_start
        times["compile"] = metrics_lib.compile_seconds() - compiled
        return metrics | self._step_metrics(mask, out, rewards, times)

    def _why_not_fused(self) -> str | None:
        return why_not_fused(
            self.config, self.rewards.compiled is not None, self.sampler.batch_bucket
        )

    def _choose_fused(self, setting) -> bool:
        fused, why = choose_fused(
            self.config, self.rewards.compiled is not None, self.sampler.batch_bucket, self.platform
        )
        log.info(
            "RL step: %s",
            "fused (one program)" if fused else f"phased ({why or 'train.fused=false'})",
        )
        return fused

    def fused_step(self, next_prompts: Callable[[], tuple[list[list[int]], list[int]]]) -> dict:
        """The same RL step as `step`, as one compiled program per prompt bucket (trainer/fused.py).
        Needs prompts that fill the sampler's batch bucket (see `_why_not_fused`)."""
        why = self._why_not_fused()
        if why:
            raise ValueError(f"the fused step cannot run: {why}")
        t0, compiled = metrics_lib.clock(), metrics_lib.compile_seconds()
        prompts, rows = next_prompts()
        tokens, mask, live = self.sampler.pad(prompts)
        if not live.all():
            raise ValueError(
                f"the fused step needs the {len(prompts)} prompts to fill the sampler's batch "
                f"bucket ({len(live)} rows on this mesh)"
            )
        P = tokens.shape[1]
        if P not in self._fused:
            self._fused[P] = self._compile_fused(P)
        on_mesh = lambda x: mesh_lib.to_device(x, mesh_lib.batch_sharding(self.mesh, np.ndim(x)))
        answers = np.asarray(rows, np.int32)
        self._clock.reset()
        self.state, metrics, out, rewards = self._fused[P](
            self.state, self.ref_params, on_mesh(tokens), on_mesh(mask), on_mesh(answers)
        )
        metrics = {k: float(mesh_lib.to_host(v)) for k, v in metrics.items()}
        out = SampleOutput(*(mesh_lib.to_host(x) for x in out))
        full_mask = np.concatenate([out.prompt_mask, out.mask], 1)
        times = self._clock.times() | {
            "step": metrics_lib.clock() - t0,
            "compile": metrics_lib.compile_seconds() - compiled,
        }
        return metrics | self._step_metrics(full_mask, out, mesh_lib.to_host(rewards), times)

    def _compile_fused(self, prompt_len: int):
        fspec = fused.FusedSpec(
            self._spec(prompt_len),
            self.sp,
            self.sampler.cache_segments,
            self.sampler.plan(prompt_len, self.sp),
            self.minibatch,
            self.config.train.epochs,
            self.rewards.in_program,
            self._clock.mark if phase_times(self.config, self.platform) else None,
        )
        ref = (
            None if self.ref_params is None else jax.tree.map(lambda x: x.sharding, self.ref_params)
        )
        return fused.jit_rl_step(fspec, self.optimizer, self.mesh, self.state_sharding, ref)

    def _step_metrics(self, mask, out, rewards, times) -> dict:
        """Rollout and speed figures of one RL step. mask [R, P + N]; times: seconds per phase
        and "step" (a fused step without train.fused_phase_times has only "step": its rates are
        then over the whole step)."""
        lengths = out.mask.sum(1)
        real = float(mask.sum())  # prompt + response tokens, padding left out
        epochs = self.config.train.epochs
        fwd = metrics_lib.forward_flops(self.model.cfg, real)
        scored = fwd * (self.alg.needs_ref(self.algo_cfg) + self.alg.needs_values)
        # rollout: one forward per token (the KV cache); update: forward + backward = 3 forwards
        flops = fwd + scored + 3 * fwd * epochs
        peak = self.peak
        rollout_s, update_s = (
            times.get("rollout", times["step"]),
            times.get("update", times["step"]),
        )
        metrics = {
            "accuracy": float(np.mean(rewards >= self.task.solved)),
            "response/length_max": float(lengths.max()),
            "response/clipped_fraction": float(np.mean(out.stop_reason == sampler_lib.STOP_LENGTH)),
            "rollout/tokens_per_s": float(lengths.sum()) / max(rollout_s, 1e-9),
            "train/tokens_per_s": real * epochs / max(update_s, 1e-9),
            **{f"time/{k}": v for k, v in times.items()},
            "perf/mfu": flops / (times["step"] * peak),
            # The rate of this step's last optimiser step.
            "learning_rate": float(self.learning_rate(int(self.state.step) - 1)),
        }
        if "update" in times:
            metrics["perf/mfu_update"] = 3 * fwd * epochs / (update_s * peak)
        return metrics | self.rewards.take_means()

    @property
    def alg(self) -> algorithms.Algorithm:
        return self.spec.alg

    @property
    def algo_cfg(self) -> ConfigDict:
        return self.spec.algo_cfg
