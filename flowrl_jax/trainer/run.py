"""A training run in a workdir: the SFT warm-up if `sft` asks for one (trainer/sft.py), an evaluation
before RL (`eval.before`), then the RL steps, resumed from the latest checkpoint, logged every step,
saved every `checkpoint.every` steps, at the end and on SIGTERM or Ctrl-C (SIGINT); the report
(`eval.report`) at the end.

    <workdir>/run.json, config*.json, lock   whose run it is, each start's config, the job's lock
                                             (trainer/workdir.py)
    <workdir>/sft/           the warm-up's checkpoints, metrics.jsonl and tensorboard/
    <workdir>/checkpoints/   Orbax checkpoints of RL (trainer/checkpoint.py)
    <workdir>/metrics.jsonl, <workdir>/tensorboard/   per-step metrics (trainer/metrics.py)
    <workdir>/metrics.png    the main curves, drawn at the end of each start
    <workdir>/eval/          evaluations (before.*, step_<N>.*); report.* (evaluation/job_report.py)

The workdir may be a local path or on object storage (gs://bucket/path): every file goes through
flowrl_jax.storage, and process 0 writes all of them but the checkpoints' array shards (each process
its own devices').

A run killed during SFT resumes SFT; one killed during RL resumes RL and loads the finished warm-up
(RL's reference policy) instead of redoing it.

A resumed run continues bit for bit: the train state holds the PRNG key and the step, and the data
order is a function of the seed and the saved positions (one per data shard).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Iterator
from typing import NamedTuple

import jax
from ml_collections import ConfigDict

from flowrl_jax import storage, tasks
from flowrl_jax.evaluation import job_report, sampled
from flowrl_jax.evaluation import report as report_lib
from flowrl_jax.models import from_config, lora, param_shapes
from flowrl_jax.rollout import sampler as sampler_lib
from flowrl_jax.tasks import Task, prompt_limit
from flowrl_jax.trainer import compile_cache, demonstrations, validate
from flowrl_jax.trainer import sft as sft_lib
from flowrl_jax.trainer.checkpoint import Checkpoints
from flowrl_jax.trainer.data import PromptSource, shard_count
from flowrl_jax.trainer.loop import Trainer, check_sizes
from flowrl_jax.trainer.metrics import MetricsLog, plot
from flowrl_jax.trainer.step import TrainState
from flowrl_jax.trainer.stop import Preempted, StopFlag
from flowrl_jax.trainer.workdir import WorkdirLock, claim_workdir, record_config, signature

__all__ = ["RunResult", "check", "run", "started", "train"]

log = logging.getLogger("flowrl_jax")


def _evaluate(config, cfg, params, tokenizer, mesh, rl_step: int, todo: dict, name="") -> dict:
    from flowrl_jax.models import Model

    t0 = time.perf_counter()
    policy = Model(cfg, params, mesh=mesh)
    metrics = sampled.periodic(config, policy, tokenizer, mesh, rl_step, todo, name)
    log.info(
        "evaluation %s took %.1f s",
        name or f"after RL step {rl_step}",
        time.perf_counter() - t0,
    )
    return metrics | {"time/eval": time.perf_counter() - t0}


@dataclasses.dataclass
class RunResult:
    history: list[dict]  # metrics of the steps this call ran
    first_step: int  # the RL step it resumed after (0 for a fresh run)
    last_step: int
    preempted: str | None = None  # the signal that stopped it early (SIGTERM, SIGINT)
    state: TrainState | None = None  # the train state at the end
    sft: sft_lib.Result | None = None  # the warm-up, where there is one
    report: dict | None = None  # the before / after report (eval.report)


class Checked(NamedTuple):
    """What the one validation of a run (`check`) read and built, without a weight read or a
    program compiled."""

    task: Task
    model_cfg: object  # DecoderConfig
    tokenizer: object
    eval_todo: dict | None  # the evaluation's tasks (sampled.eval_tasks), when it evaluates
    demos: list | None  # the warm-up's encoded demonstrations, when there is a warm-up


def check(config: ConfigDict, mesh, task: Task | None = None) -> Checked:
    """Everything a user can get wrong in a run's config and data, checked once, before any weight
    is read or any program compiles: sizes against the mesh, the prompt limit, the task and its
    data (`task`, if built already), the evaluation, the warm-up and its demonstrations, the
    model's config and tokenizer, the stop tokens. It writes nothing. `started` calls it, first
    of a run's start."""
    validate.check(config)  # every key's allowed values first: one line naming a bad one
    check_sizes(config, mesh)
    prompt_limit(config)
    if task is None:
        task = tasks.get(config.task, config.seed)
    wants_eval = config.eval.every or config.eval.before
    eval_todo = sampled.eval_tasks(config, task) if wants_eval else None
    settings = sampled.periodic_settings(config)
    job_report.check(config.eval, config.eval.k in settings.pass_k)
    sft_lib.check(config.sft, mesh)  # its sizes, before its demonstrations are read
    model_cfg, tokenizer = from_config.model_config(config.model)
    if lora.enabled(config.lora):  # the targets against the model's parameter shapes
        lora.targets(config.lora, param_shapes(model_cfg))
    sampler_lib.stop_token_ids(tokenizer, config.rollout.stop_tokens)
    sampler_lib.check_slots(config.rollout, model_cfg, mesh)
    demos = demonstrations_for(config, task, tokenizer)
    if demos is not None:
        sft_lib.check(config.sft, mesh, len(demos))
    return Checked(task, model_cfg, tokenizer, eval_todo, demos)


@contextlib.contextmanager
def started(config: ConfigDict, mesh, task: Task | None = None) -> Iterator[Checked]:
    """The start of a run, as one step: `check` (which writes nothing), then the workdir's lock,
    then the claim (refused if the workdir holds another model's or algorithm's run), then the
    compilation cache pointed at the run's. Yields check's result with the lock held; nothing is
    written into the workdir before that. At the end, logs what the cache did."""
    checked = check(config, mesh, task)
    storage.makedirs(config.workdir)
    with WorkdirLock(config.workdir):
        claim_workdir(config.workdir, signature(checked.model_cfg, config.algorithm.name))
        cache, before = compile_cache.enable(config), compile_cache.counts()
        try:
            yield checked
        finally:
            log.info("%s", compile_cache.summary(cache, before))


def run(
    config: ConfigDict, mesh, model, tokenizer, task: Task, checked: Checked | None = None
) -> RunResult:
    """Train `config.train.steps` RL steps in `config.workdir` (after the SFT warm-up, if
    `config.sft` asks for one), resuming if it holds a checkpoint. checked: the result of
    `started`, by an entry point that holds it; without it the run starts here."""
    if checked is not None:
        return _run(config, mesh, model, tokenizer, task, checked.eval_todo, checked.demos)
    with started(config, mesh, task) as checked:
        return _run(config, mesh, model, tokenizer, task, checked.eval_todo, checked.demos)


def demonstrations_for(config: ConfigDict, task: Task, tokenizer):
    """The warm-up's demonstrations, read, checked and tokenized (None without a warm-up)."""
    if not sft_lib.enabled(config.sft):
        return None
    rows = demonstrations.rows_for(config, task)
    return demonstrations.encode(
        rows, tokenizer, demonstrations.max_len(config), config.task.system_prompt
    )


def _run(config: ConfigDict, mesh, model, tokenizer, task: Task, eval_todo, demos) -> RunResult:
    workdir = config.workdir
    warm = None
    if demos is not None:
        warm = sft_lib.run(config, mesh, model, tokenizer, demos, _has_checkpoint(workdir))
        if warm.preempted:
            return RunResult([], 0, 0, warm.preempted, sft=warm)
        model = warm.model  # RL starts from it, and it is RL's reference policy
        if config.train.steps == 0:  # SFT only (then `python -m flowrl_jax.export --sft`)
            record_config(workdir, config.to_json_best_effort(), 0)
            return RunResult([], 0, 0, sft=warm)
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

    if config.eval.before and not first:
        # The policy before any update (with LoRA, the base with its fresh adapters: the same
        # function; the state holds the base arrays since the trainer took them over).
        policy = trainer.state.params["policy"]
        _evaluate(config, trainer.model.cfg, policy, tokenizer, mesh, 0, eval_todo, "before")
    metrics_log = MetricsLog(workdir, total, first)
    log.info("MFU is against a peak of %.3g FLOP/s (%s)", trainer.peak, trainer.peak_source)
    result = RunResult([], first, first, sft=warm)
    stop = StopFlag()
    try:
        for rl_step in range(first + 1, total + 1):
            try:
                if trainer.fused:  # one program: a stop is seen after it
                    metrics = trainer.fused_step(next_prompts)
                else:
                    before = prompts.state()  # what a stop inside the step saves
                    metrics = trainer.step(next_prompts, stop.check)
            except Preempted as e:
                # Before its update: the state is step rl_step - 1's. Saved now (unless it is
                # already), with the data position before this step's prompts, so the resumed run
                # draws them again and repeats the uninterrupted one.
                result.preempted = e.args[0]
                if rl_step - 1 not in checkpoints.steps():
                    record = {"data": before, "config": config.to_json_best_effort()}
                    checkpoints.save(rl_step - 1, trainer.state, record)
                log.warning(
                    "stopped during RL step %d of %d (%s), before its update; checkpoint of "
                    "step %d saved",
                    rl_step,
                    total,
                    result.preempted,
                    rl_step - 1,
                )
                break
            every = config.eval.every
            if every and (rl_step % every == 0 or rl_step == total):
                policy = trainer.state.params["policy"]
                cfg = trainer.model.cfg
                metrics |= _evaluate(config, cfg, policy, tokenizer, mesh, rl_step, eval_todo)
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
    if config.eval.report and result.last_step == total and jax.process_index() == 0:
        machine = report_lib.machine(config.model.dtype, config.model.param_dtype)
        result.report = job_report.write(
            workdir, config.eval.k, total, job_report.process_seconds(), bool(first), machine
        )
    return result


def _has_checkpoint(workdir: str) -> bool:
    """Whether RL has saved a step in `workdir` (then the warm-up is loaded, not trained)."""
    return any(n.isdigit() for n in storage.listdir(os.path.join(workdir, "checkpoints")))


def train(config: ConfigDict, mesh, model=None, tokenizer=None, task=None) -> RunResult:
    """Train on `config.task` (or `task`, built from it already) in `config.workdir`, resuming from
    its latest checkpoint: started (checked, locked, claimed) before the model is built (or `model`
    and `tokenizer` are taken)."""
    with started(config, mesh, task) as checked:
        if model is None:
            model, tokenizer = from_config.build(config.model, mesh, config.seed)
        return run(config, mesh, model, tokenizer, checked.task, checked)
