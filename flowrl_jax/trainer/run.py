"""A training run in a workdir: resume from its latest checkpoint, run the RL steps, log every step,
save every `checkpoint.every` steps, at the end and on SIGTERM.

    <workdir>/run.json       the model and algorithm this workdir belongs to (checked on every start)
    <workdir>/config.json    the resolved config of the latest start
    <workdir>/checkpoints/   Orbax checkpoints (trainer/checkpoint.py)
    <workdir>/metrics.jsonl, <workdir>/tensorboard/   per-step metrics (trainer/metrics.py)
    <workdir>/metrics.png    the main curves, drawn at the end of each start

A resumed run continues bit for bit: the train state holds the PRNG key and the step, and the data
order is a function of the seed and the saved positions (one per data shard).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import threading
import time

import jax
import numpy as np
from ml_collections import ConfigDict

from flowrl_jax.models.families import DecoderConfig
from flowrl_jax.tasks import Task, prompt_limit
from flowrl_jax.trainer.checkpoint import Checkpoints
from flowrl_jax.trainer.data import PromptSource, shard_count
from flowrl_jax.trainer.loop import Trainer, check_sizes
from flowrl_jax.trainer.metrics import MetricsLog, plot
from flowrl_jax.trainer.step import TrainState

log = logging.getLogger("flowrl_jax")

# Fields that change what is computed but not what the parameters are: a run may resume with others.
_RUNTIME_FIELDS = {
    "dtype",
    "param_dtype",
    "remat",
    "attention_block",
    "causal_block",
    "max_position_embeddings",
}


def signature(model_cfg: DecoderConfig, algorithm: str) -> dict:
    """What a workdir's checkpoints are checkpoints of."""
    model = {k: v for k, v in dataclasses.asdict(model_cfg).items() if k not in _RUNTIME_FIELDS}
    return json.loads(json.dumps({"model": model, "algorithm": algorithm}))  # tuples -> lists


def claim_workdir(workdir: str, sig: dict) -> None:
    """Refuse a workdir that holds a run of another model or algorithm; mark a new one as ours."""
    path = os.path.join(workdir, "run.json")
    if os.path.exists(path):
        with open(path) as f:
            theirs = json.load(f)
        if theirs != sig:
            ours, old = _flat(sig), _flat(theirs)
            diff = [
                f"{k}: {old.get(k)!r} there, {ours.get(k)!r} here"
                for k in sorted(set(ours) | set(old))
                if ours.get(k) != old.get(k)
            ]
            raise ValueError(
                f"workdir {workdir} holds a run of a different model or algorithm "
                f"({'; '.join(diff[:5])}); use a new --workdir, or delete it to start over"
            )
    elif jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(path + ".tmp", "w") as f:
            json.dump(sig, f, indent=1)
        os.replace(path + ".tmp", path)


def _evaluate(config, trainer, tokenizer, mesh, rl_step: int, task: Task) -> dict:
    from flowrl_jax import evaluate
    from flowrl_jax.models import Model

    t0 = time.perf_counter()
    policy = Model(trainer.model.cfg, trainer.state.params["policy"], mesh=mesh)
    metrics = evaluate.periodic(config, policy, tokenizer, mesh, rl_step, task)
    log.info("evaluation after RL step %d took %.1f s", rl_step, time.perf_counter() - t0)
    return metrics | {"time/eval": time.perf_counter() - t0}


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


class StopFlag:
    """Set by SIGTERM (preemption); every process agrees on it at the end of a step."""

    def __init__(self):
        self.local = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        log.warning("SIGTERM: saving a checkpoint after this step, then stopping")
        self.local = True

    def requested(self) -> bool:
        if jax.process_count() == 1:
            return self.local
        from jax.experimental import multihost_utils

        return bool(np.any(multihost_utils.process_allgather(np.array([self.local]))))

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


@dataclasses.dataclass
class RunResult:
    history: list[dict]  # metrics of the steps this call ran
    first_step: int  # the RL step it resumed after (0 for a fresh run)
    last_step: int
    preempted: bool = False
    state: TrainState | None = None  # the train state at the end


def run(config: ConfigDict, mesh, model, tokenizer, task: Task) -> RunResult:
    """Train `config.train.steps` RL steps in `config.workdir`, resuming if it holds a checkpoint."""
    check_sizes(config, mesh)
    workdir = config.workdir
    claim_workdir(workdir, signature(model.cfg, config.algorithm.name))
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=1))
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
    restored = checkpoints.restore_latest(trainer.state)
    if restored is not None:
        trainer.state, record = restored
        prompts.restore(record["data"])
        first = record["rl_step"]
    total = config.train.steps
    if first:
        log.info("resuming after RL step %d of %d", first, total)

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
                metrics |= _evaluate(config, trainer, tokenizer, mesh, rl_step, task)
            metrics_log.write(rl_step, metrics)
            result.history.append(metrics)
            result.last_step = rl_step
            result.preempted = stop.requested()
            if result.preempted or rl_step == total or checkpoints.due(rl_step):
                record = {"data": prompts.state(), "config": config.to_json_best_effort()}
                checkpoints.save(rl_step, trainer.state, record)
            if result.preempted:
                log.warning(
                    "stopped after RL step %d of %d (SIGTERM); checkpoint saved", rl_step, total
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
