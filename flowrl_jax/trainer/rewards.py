"""The reward phase of the RL step: each response decoded and scored by the task's host
reward in a thread pool, with a deadline (a hung reward must not hang training), shared across
processes; or the task's compiled reward, where it has one."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import jax
import numpy as np

from flowrl_jax.rollout import SampleOutput
from flowrl_jax.tasks import Task, user_rewards


def host_callback(score, n: int):
    """A host reward inside a compiled program: (SampleOutput, answers [B] int32) -> rewards [R]
    float32, traceable. The responses go to the host (a callback), `score(out, rows)` decodes and
    scores them there (Rewards, with its deadline), and the rewards come back; the program waits
    for the host meanwhile. n: responses per answer."""

    def on_host(tokens, mask, answers):
        sample = SampleOutput(None, None, np.asarray(tokens), np.asarray(mask), None, None)
        return score(sample, np.repeat(np.asarray(answers), n).tolist())

    def reward(out: SampleOutput, answers):
        shape = jax.ShapeDtypeStruct((out.tokens.shape[0],), np.float32)
        return jax.pure_callback(on_host, shape, out.tokens, out.mask, answers)

    return reward


class Rewards:
    """rewards(out, rows) -> float32 [R]. `compiled`: the task's traceable reward, or None.
    `in_program` is what the fused step calls inside its program: the compiled reward, or a host
    callback to this pool."""

    def __init__(self, task: Task, tokenizer, n: int, workers: int, timeout: float):
        self.task, self.tokenizer, self.n, self.timeout = task, tokenizer, n, timeout
        self.compiled = task.make_jit_reward(tokenizer) if task.make_jit_reward else None
        self._jit = jax.jit(self.compiled) if self.compiled else None
        self._pool = ThreadPoolExecutor(workers)
        self._sums, self._count = {}, 0  # the user's functions' sums since take_means

    @property
    def in_program(self):
        """(SampleOutput, answers [B] int32) -> rewards [R] float32, traceable."""
        return self.compiled or host_callback(self, self.n)

    def __call__(self, out: SampleOutput, rows: list[int]) -> np.ndarray:
        """Decode each response and score it with the task's reward, in parallel threads. With
        several processes each scores every process_count-th response and they share the results.
        A task with a compiled reward (`make_jit_reward`) is scored by it instead, on every process."""
        if self._jit is not None:
            first = np.asarray(rows[:: self.n], np.int32)  # one row per prompt
            return np.asarray(self._jit(out, first), np.float32)
        count, index = jax.process_count(), jax.process_index()
        mine = np.arange(len(rows))[index::count]
        texts = dict(
            zip(
                mine,
                self.tokenizer.batch_decode(
                    [out.tokens[i][out.mask[i] == 1].tolist() for i in mine],
                    skip_special_tokens=True,
                ),
            )
        )

        named = self.task.named_rewards

        def one(i):
            if named:  # the user's functions: each one's value, checked, for its own mean
                return [user_rewards.value(r, self.task, texts[i], rows[i]) for r in named]
            try:
                return [float(self.task.reward(texts[i], rows[i]))]
            except Exception as e:
                raise RuntimeError(
                    f"task {self.task.name!r}: the reward function {_name(self.task.reward)} failed "
                    f"on dataset row {rows[i]} "
                    f"(response {texts[i][:200]!r}): {type(e).__name__}: {e}"
                ) from e

        parts = np.zeros((max(len(named), 1), len(rows)), np.float32)
        timeout = self.timeout or None
        futures = [self._pool.submit(one, i) for i in mine]
        deadline = None if timeout is None else time.monotonic() + timeout
        for i, future in zip(mine, futures):
            try:
                left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
                parts[:, i] = future.result(timeout=left)
            except FutureTimeout:
                for f in futures:
                    f.cancel()
                what = ", ".join(repr(r.name) for r in named) or _name(self.task.reward)
                raise RuntimeError(
                    f"task {self.task.name!r}: the reward function {what} did not "
                    f"return within train.reward_timeout={timeout} s (dataset row {rows[i]})"
                ) from None
        if count > 1:  # each entry is non-zero on at most one process
            from jax.experimental import multihost_utils

            parts = np.asarray(multihost_utils.process_allgather(parts)).sum(0)
        if not named:
            return parts[0].astype(np.float32)
        for r, values in zip(named, parts):
            self._sums[r.name] = self._sums.get(r.name, 0.0) + float(values.sum())
        self._count += parts.shape[1]
        weights = np.asarray([r.weight for r in named], np.float64)
        return (weights @ parts.astype(np.float64)).astype(np.float32)

    def take_means(self) -> dict:
        """{"reward/<name>": mean} of each of the user's functions over the responses scored
        since the last call (a step's), then reset."""
        means = {f"reward/{k}": v / max(self._count, 1) for k, v in self._sums.items()}
        self._sums, self._count = {}, 0
        return means


def _name(fn) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)
