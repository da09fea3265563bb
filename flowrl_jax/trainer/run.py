"""A training run in a workdir: resume from its latest checkpoint, run the RL steps, log every step,
save every `checkpoint.every` steps, at the end and on SIGTERM or Ctrl-C (SIGINT).

    <workdir>/run.json, config*.json, lock   whose run it is, each start's config, the job's lock
                                             (trainer/workdir.py)
    <workdir>/checkpoints/   Orbax checkpoints (trainer/checkpoint.py)
    <workdir>/metrics.jsonl, <workdir>/tensorboard/   per-step metrics (trainer/metrics.py)
    <workdir>/metrics.png    the main curves, drawn at the end of each start

A resumed run continues bit for bit: the train state holds the PRNG key and the step, and the data
order is a function of the seed and the saved positions (one per data shard).
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
import time

import jax
import numpy as np
from ml_collections import ConfigDict

from flowrl_jax.tasks import Task, prompt_limit
from flowrl_jax.trainer.checkpoint import Checkpoints
from flowrl_jax.trainer.data import PromptSource, shard_count
from flowrl_jax.trainer.loop import Trainer, check_sizes
from flowrl_jax.trainer.metrics import MetricsLog, plot
from flowrl_jax.trainer.step import TrainState
from flowrl_jax.trainer.workdir import WorkdirLock, claim_workdir, record_config, signature

__all__ = ["RunResult", "claim_workdir", "run", "signature"]

log = logging.getLogger("flowrl_jax")


def _evaluate(config, trainer, tokenizer, mesh, rl_step: int, todo: dict) -> dict:
    from flowrl_jax import evaluate
    from flowrl_jax.models import Model

    t0 = time.perf_counter()
    policy = Model(trainer.model.cfg, trainer.state.params["policy"], mesh=mesh)
    metrics = evaluate.periodic(config, policy, tokenizer, mesh, rl_step, todo)
    log.info("evaluation after RL step %d took %.1f s", rl_step, time.perf_counter() - t0)
    return metrics | {"time/eval": time.perf_counter() - t0}


class StopFlag:
    """Set by SIGTERM (preemption) or SIGINT (Ctrl-C); every process agrees on it at the end of a
    step. A second Ctrl-C stops at once (KeyboardInterrupt), without the checkpoint."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.local = None  # the name of the signal that asked to stop
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.local == "SIGINT" and signum == signal.SIGINT:
            raise KeyboardInterrupt
        log.warning(
            "%s: saving a checkpoint after this step, then stopping%s",
            name,
            " (Ctrl-C again stops at once, without it)" if name == "SIGINT" else "",
        )
        self.local = name

    def requested(self) -> str | None:
        """The signal that asked this run to stop, on any process, or None."""
        if jax.process_count() == 1:
            return self.local
        from jax.experimental import multihost_utils

        code = self.SIGNALS.index(signal.Signals[self.local]) + 1 if self.local else 0
        codes = np.asarray(multihost_utils.process_allgather(np.array([code])))
        return signal.Signals(self.SIGNALS[int(codes.max()) - 1]).name if codes.max() else None

    def restore(self) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous)


@dataclasses.dataclass
class RunResult:
    history: list[dict]  # metrics of the steps this call ran
    first_step: int  # the RL step it resumed after (0 for a fresh run)
    last_step: int
    preempted: str | None = None  # the signal that stopped it early (SIGTERM, SIGINT)
    state: TrainState | None = None  # the train state at the end


def run(config: ConfigDict, mesh, model, tokenizer, task: Task, eval_todo=None) -> RunResult:
    """Train `config.train.steps` RL steps in `config.workdir`, resuming if it holds a checkpoint.
    eval_todo: the periodic evaluation's tasks (evaluate.eval_tasks), if built already."""
    check_sizes(config, mesh)
    with WorkdirLock(config.workdir):
        return _run(config, mesh, model, tokenizer, task, eval_todo)


def _run(config: ConfigDict, mesh, model, tokenizer, task: Task, eval_todo) -> RunResult:
    workdir = config.workdir
    if config.eval.every and eval_todo is None:  # bad eval data fails now, not after training
        from flowrl_jax import evaluate

        eval_todo = evaluate.eval_tasks(config, task)
    claim_workdir(workdir, signature(model.cfg, config.algorithm.name))
    # Every row (of this process's data shards) encoded now, before anything compiles; rows too
    # long for the sampler are dropped here, with a log line. The order permutes the kept prompts,
    # so its saved size is theirs: a resume whose dataset, filter or tokenizer changes the count is
    # refused.
    prompts = PromptSource(
        task,
        tokenizer,
        prompt_limit(config),
        config.task.system_prompt,
        config.seed,
        config.train.shuffle,
        shard_count(config.task.data_shards, jax.process_count()),
    )
    trainer = Trainer(config, model, tokenizer, mesh, task)
    checkpoints = Checkpoints(workdir, config.checkpoint)
    first = 0
    restored = checkpoints.restore_latest(trainer.state, set_aside=True)
    if restored is not None:
        trainer.state, record = restored
        prompts.restore(record["data"])
        first = record["rl_step"]
    total = config.train.steps
    if first:
        log.info("resuming after RL step %d of %d", first, total)
    record_config(workdir, config.to_json_best_effort(), first)

    def next_prompts():
        return prompts.take(config.train.prompts_per_step)

    metrics_log = MetricsLog(workdir, total, first)
    log.info("MFU is against a peak of %.3g FLOP/s (%s)", trainer.peak, trainer.peak_source)
    result = RunResult([], first, first)
    stop = StopFlag()
    try:
        for rl_step in range(first + 1, total + 1):
            metrics = (trainer.fused_step if trainer.fused else trainer.step)(next_prompts)
            every = config.eval.every
            if every and (rl_step % every == 0 or rl_step == total):
                metrics |= _evaluate(config, trainer, tokenizer, mesh, rl_step, eval_todo)
            metrics_log.write(rl_step, metrics)
            result.history.append(metrics)
            result.last_step = rl_step
            result.preempted = stop.requested()
            if result.preempted or rl_step == total or checkpoints.due(rl_step):
                record = {"data": prompts.state(), "config": config.to_json_best_effort()}
                checkpoints.save(rl_step, trainer.state, record)
            if result.preempted:
                log.warning(
                    "stopped after RL step %d of %d (%s); checkpoint saved",
                    rl_step,
                    total,
                    result.preempted,
                )
                break
    finally:
        stop.restore()
        checkpoints.wait()
        checkpoints.close()
        metrics_log.close()
    plot(workdir)
    result.state = trainer.state
    return result
