"""One RL step as one compiled program: sample a group per prompt, reward it, score it (reference
log-probs, old values), prepare the algorithm's batch, then every optimiser step of the rollout
batch (mini-batches x epochs, `step.updates`), the state donated.

It composes the functions the phased loop (trainer/loop.py) jits one by one: `rollout.sample`,
`step.rollout_batch`, `step.score_rollout`, `step.prepare`, `step.updates`, with the same keys
(`step.phase_key`). With the same seed both give the same parameters and metrics
(tests/test_fused.py).

The reward runs inside the program too: `FusedSpec.reward(out, answers) -> float32[R]`, a function
of the sampled tokens (`rollout.SampleOutput`, R = B * n rows) and one int32 per prompt (`answers`:
the dataset row). Either the task's compiled reward, or (trainer/rewards.py: `Rewards.in_program`)
a `jax.pure_callback` to the host reward pool. The callback costs a device-to-host copy of the
response tokens and the program waits for the slowest reward; on several hosts the phased loop is
the better choice for host rewards (each host scores its share there), and the trainer picks it.

Per-phase times: with `FusedSpec.mark` set (train.fused_phase_times) the program calls the host as
each phase's output is ready, and the next phase waits for that call, so each timestamp falls
between its two phases. That is five scalar host round trips a step.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from flowrl_jax import mesh as mesh_lib
from flowrl_jax.rollout.sampler import SamplingParams, sample
from flowrl_jax.rollout.slots import SlotPlan
from flowrl_jax.trainer import step as step_lib


@dataclasses.dataclass(frozen=True)
class FusedSpec:
    step: step_lib.StepSpec  # prompt_len is the prompt bucket of this program
    sampling: SamplingParams
    cache_segments: int
    slots: SlotPlan | None  # the slot sampler's plan at this prompt bucket; None: static batch
    minibatch: int  # sequences per optimiser step
    epochs: int
    reward: Callable  # (SampleOutput, answers [B] int32) -> rewards [R] float32, traceable
    # Optional host function mark(phase), called from the program when each phase's output is
    # ready: "start", then each of PHASES. None: no callbacks.
    mark: Callable | None = None


PHASES = ("rollout", "reward", "logprobs", "update")


class PhaseClock:
    """The host side of the phase marks: `reset()` before a step, `mark` is its FusedSpec.mark,
    `times()` after it gives the seconds per phase ({} when no mark came)."""

    def __init__(self):
        self.marks: dict[str, float] = {}

    def reset(self):
        self.marks = {}

    def mark(self, phase: str):
        """Called from the program (on a runtime thread) as each phase ends. With several devices
        it may come once per device: the first call counts."""
        self.marks.setdefault(phase, time.perf_counter())

    def times(self) -> dict[str, float]:
        marks = self.marks
        if "start" not in marks:
            return {}
        edges = ["start", *PHASES]
        return {b: marks[b] - marks[a] for a, b in zip(edges, edges[1:])}


def _mark(fspec: FusedSpec, phase: str, ready, gate):
    """Call fspec.mark(phase) once `ready` (the phase's outputs, a pytree: one element of each leaf
    goes to the host) is computed, and return `gate` (the next phase's input) made to wait for that
    call. Without the wait XLA may run the next phase,
    or a host reward, before the mark, and the time would land in the wrong phase. Each mark is
    one small host round trip in the program."""
    if fspec.mark is None:
        return gate

    def on_host(_):
        fspec.mark(phase)
        return np.zeros((), gate.dtype)

    last = sum(jnp.ravel(x)[-1].astype(jnp.float32) for x in jax.tree.leaves(ready))
    zero = jax.pure_callback(on_host, jax.ShapeDtypeStruct((), gate.dtype), last)
    return gate + zero


def rl_step(fspec: FusedSpec, optimizer, state, ref_params, prompts, prompt_mask, answers):
    """prompts, prompt_mask [B, P] left-padded at the bucket shape (every row live); answers [B]
    int32. -> (state, metrics, out, rewards): the algorithm's diagnostics averaged over the
    optimiser steps, the rollout (SampleOutput) and its rewards [R]."""
    spec, sp = fspec.step, fspec.sampling
    rng = step_lib.phase_key(state.rng, state.step, step_lib.SAMPLE)  # the loop's first attempt
    live = jnp.ones(prompts.shape[0], bool)
    prompts = _mark(fspec, "start", prompts, prompts)
    out = sample(
        spec.model,
        sp,
        fspec.cache_segments,
        fspec.slots,
        state.params["policy"],
        prompts,
        prompt_mask,
        live,
        rng,
    )
    out = out._replace(tokens=_mark(fspec, "rollout", out.tokens, out.tokens))
    rewards = fspec.reward(out, answers).astype(jnp.float32)
    tokens, mask, batch = step_lib.rollout_batch(out, rewards, sp.n)
    tokens = _mark(fspec, "reward", rewards, tokens)  # scoring starts after the reward
    size = fspec.minibatch
    block = size // spec.micro_batches  # a micro-batch's rows, as the loop scores them
    ref, old_values = step_lib.score_rollout(spec, state.params, ref_params, tokens, mask, block)
    batch = step_lib.prepare(spec, batch._replace(ref_logp=ref, old_values=old_values))
    tokens = _mark(fspec, "logprobs", batch, tokens)  # the updates start after the scoring

    state, metrics = step_lib.updates(
        spec, optimizer, size, fspec.epochs, state, tokens, mask, batch
    )
    # Ready when every parameter is updated: the loss alone can be ready before the backward pass
    # (XLA unrolls a scan of one step).
    metrics["loss"] = _mark(fspec, "update", state.params, metrics["loss"])
    return state, metrics, out, rewards


def jit_rl_step(fspec: FusedSpec, optimizer, mesh, state_sharding, ref_sharding):
    """`rl_step` compiled, the state donated: (state, ref_params, prompts, prompt_mask, answers) ->
    (state, metrics, out, rewards). ref_sharding: the reference parameters' shardings (None when
    the algorithm has no reference model)."""
    rows = mesh_lib.batch_sharding(mesh, ndim=1)  # every batch array: rows split
    return jax.jit(
        functools.partial(rl_step, fspec, optimizer),
        # Explicit on both sides, so the state the step returns enters the next step with the
        # same shardings (one program) and the donation reuses its buffers.
        in_shardings=(state_sharding, ref_sharding, rows, rows, rows),
        out_shardings=(state_sharding, mesh_lib.replicated(mesh), rows, rows),
        donate_argnums=0,
    )
