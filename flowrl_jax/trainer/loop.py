"""The host loop of one RL step, phase by phase: sample a group per prompt, score the responses on
the host, compute reference log-probs and old values, the algorithm's advantages, then optimiser
steps over mini-batches of whole groups. Host Python does the rewards and nothing else compiled.

(Issue #5 grows this into the full trainer: checkpoints, logs, evaluation; issue #9 fuses the
phases into one program.)
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import jax
import numpy as np
from ml_collections import ConfigDict

from flowrl_jax import algorithms
from flowrl_jax import mesh as mesh_lib
from flowrl_jax.rollout import SampleOutput
from flowrl_jax.rollout import sampler as sampler_lib
from flowrl_jax.trainer import step as step_lib

log = logging.getLogger(__name__)


def default_config() -> ConfigDict:
    return ConfigDict(
        {
            "steps": 2,  # RL steps (rollout batches) to run
            "prompts_per_step": 2,  # prompts per rollout batch (paper: 512)
            # Sequences per optimiser step, a multiple of rollout.n so groups stay whole (paper: 32
            # prompts x 8); 0 = the whole rollout batch in one step.
            "minibatch_size": 0,
            "epochs": 1,  # passes over each rollout batch
        }
    )


def check_sizes(config: ConfigDict, mesh) -> int:
    """Refuse sizes that cannot work, before anything compiles. Returns the mini-batch size."""
    algorithms.get(config.algorithm.name)  # an unknown name lists the known ones
    n, t = config.rollout.n, config.train
    rollout = t.prompts_per_step * n
    size = t.minibatch_size or rollout
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
    return size


class Trainer:
    """Holds the train state, the frozen reference parameters and the compiled phases."""

    def __init__(self, config: ConfigDict, model, tokenizer, mesh, reward_fn: Callable):
        """reward_fn(SampleOutput, prompt_indices) -> rewards [rows] float (host)."""
        self.minibatch = check_sizes(config, mesh)
        self.config, self.model, self.reward_fn = config, model, reward_fn
        self.sampler, self.sp = sampler_lib.from_config(model.cfg, config.rollout, mesh, tokenizer)
        name = config.algorithm.name
        self.algo_cfg = config.algorithm[name]
        self.optimizer = step_lib.make_optimizer(config.optimizer, config.heads)
        spec = self._spec(0)
        self.state = step_lib.init_state(
            spec, model.params, self.optimizer, jax.random.key(config.seed)
        )
        self.ref_params = model.params  # frozen: the policy's arrays are never updated in place
        self._phases: dict[int, tuple] = {}

    def _spec(self, prompt_len: int) -> step_lib.StepSpec:
        return step_lib.StepSpec(
            self.model.cfg,
            self.config.algorithm.name,
            self.algo_cfg,
            self.config.heads,
            prompt_len,
            self.sp.temperature if self.sp.temperature > 0 else 1.0,
        )

    def _compiled(self, prompt_len: int):
        """Jitted (score, prepare, update) for one prompt bucket."""
        if prompt_len not in self._phases:
            spec = self._spec(prompt_len)
            self._phases[prompt_len] = (
                jax.jit(functools.partial(step_lib.score, spec)),
                jax.jit(functools.partial(step_lib.prepare, spec)),
                jax.jit(functools.partial(step_lib.update, spec, self.optimizer)),
            )
        return self._phases[prompt_len]

    def sample(self, prompts: list[list[int]], rng) -> tuple[SampleOutput, np.ndarray]:
        out = self.sampler(self.state.params["policy"], prompts, rng, self.sp)
        group = np.repeat(np.arange(len(prompts)), self.sp.n)
        return out, np.asarray(self.reward_fn(out, group), np.float32)

    def rollout(self, next_prompts: Callable[[], list[list[int]]]):
        """Sample and reward one rollout batch of `train.prompts_per_step` groups. With dynamic
        sampling (DAPO) groups whose rewards are all equal are dropped and more prompts drawn, at
        most `max_refills` rollouts; if the batch is still short, equal groups fill it (logged).
        -> (tokens, mask [R, P + N], out, rewards [R], group [R])."""
        want, n = self.config.train.prompts_per_step, self.sp.n
        dynamic = self.algo_cfg.get("dynamic_sampling", False)
        kept, spare = [], []
        attempts = self.algo_cfg.get("max_refills", 1) if dynamic else 1
        for attempt in range(attempts):
            prompts = next_prompts()
            key = 1_000_000 * (attempt + 1) + int(self.state.step)
            out, rewards = self.sample(prompts, jax.random.fold_in(self.state.rng, key))
            for g in range(len(prompts)):
                rows = slice(g * n, (g + 1) * n)
                part = (SampleOutput(*(np.asarray(x)[rows] for x in out)), rewards[rows])
                varied = np.ptp(rewards[rows]) > 0
                (kept if varied or not dynamic else spare).append(part)
            if len(kept) >= want:
                break
        if len(kept) < want:
            log.warning(
                "dynamic sampling: %d of %d groups have varied rewards after %d rollouts; "
                "equal-reward groups fill the rest",
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
        rewards = np.concatenate([r for _, r in groups])
        group = np.repeat(np.arange(want), n).astype(np.int32)
        tokens = np.concatenate([out.prompt_tokens, out.tokens], 1)
        mask = np.concatenate([out.prompt_mask, out.mask], 1)
        return tokens, mask, out, rewards, group

    def step(self, next_prompts: Callable[[], list[list[int]]]) -> dict:
        """One RL step: sample (and refill), reward, score, prepare, update over mini-batches.
        next_prompts() gives the next `train.prompts_per_step` prompts as token-id lists."""
        tokens, mask, out, rewards, group = self.rollout(next_prompts)
        score, prepare, update = self._compiled(out.prompt_tokens.shape[1])
        ref, old_values = score(self.state.params, self.ref_params, tokens, mask)
        batch = algorithms.Batch(
            logp=None,
            old_logp=out.logprobs,  # the sampler's log-probs equal a recomputation (tested)
            mask=out.mask.astype(np.float32),
            rewards=rewards,
            group=group,
            ref_logp=ref,
            old_values=old_values,
        )
        batch = prepare(batch)
        metrics = []
        order = np.arange(len(rewards))
        for _ in range(self.config.train.epochs):
            for start in range(0, len(order), self.minibatch):
                rows = order[start : start + self.minibatch]
                part = jax.tree.map(lambda x, rows=rows: x[rows], batch)
                self.state, m = update(self.state, tokens[rows], mask[rows], part)
                metrics.append(m)
        return {k: float(np.mean([m[k] for m in metrics])) for k in metrics[0]}
