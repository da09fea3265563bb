"""The embedded default config of `python -m flowrl_jax.train`, composed from component defaults.

Each component owns its defaults (`mesh.default_config`, `models.from_config.default_config`); this
file composes them. `base_config()` is the engine's plain composition (the tiny model, the `digits`
task, two FlowRL steps, no warm-up: what tests and quick checks start from); `get_config()` is the
default job on top of it (`job_config`): a supervised warm-up on the countdown task, an evaluation of
the warm-up model, FlowRL with periodic evaluation, and a before/after report. `--config=
flowrl_jax/config.py:base` picks the plain composition from the command line.

The config is locked after loading: an override of a key that does not exist
(`--config.modle.dtype=...`) is an error, not a new key.
"""

import importlib.util
import os

from ml_collections import ConfigDict

from flowrl_jax import algorithms, hardware, mesh, tasks
from flowrl_jax.algorithms import heads
from flowrl_jax.evaluation import sampled
from flowrl_jax.models import from_config, lora
from flowrl_jax.rollout import sampler
from flowrl_jax.trainer import checkpoint, loop, sft, step


def base_config() -> ConfigDict:
    config = ConfigDict()
    config.seed = 0
    config.workdir = "runs/default"
    config.mesh = mesh.default_config()
    config.model = from_config.default_config()
    # Multi-host: on TPU pods jax.distributed.initialize() needs no arguments; on GPU clusters give the
    # coordinator (host:port), the process count and this process's id (launch/ scripts fill them).
    config.distributed = ConfigDict(
        {"enabled": False, "coordinator_address": "", "num_processes": 0, "process_id": -1}
    )
    config.rollout = sampler.default_config()
    config.algorithm = algorithms.default_config()  # --config.algorithm.name=grpo switches it
    config.heads = heads.default_config()
    config.optimizer = step.default_config()
    config.train = loop.default_config()
    config.checkpoint = checkpoint.default_config()
    # LoRA adapters on the policy, the base frozen (models/lora.py); off at rank 0.
    config.lora = lora.default_config()
    # digits (synthetic) | countdown (built in, many answers) | file (--config.task.path=data.jsonl,
    # task.kind math|code) | gym:<reasoning-gym dataset> | humaneval; tasks/base.py documents each key.
    config.task = tasks.default_config()
    config.sft = sft.default_config()  # the supervised warm-up before RL; off by default
    config.eval = sampled.default_config()  # periodic evaluation; off by default
    # A tiny random model on the CPU: short responses, small groups, and a learning rate a random
    # tiny model notices (the paper's 1e-6 is for 7B checkpoints).
    config.rollout.n = 4
    config.rollout.max_new_tokens = 16
    config.optimizer.learning_rate = 1e-4
    # The foundation checks before training (greedy decode, sampled vs recomputed log-probs, export
    # and reload): --config.smoke.enabled=True. new_tokens: greedy and sampled tokens per response.
    config.smoke = ConfigDict({"enabled": False, "new_tokens": 24})
    # The hardware a recipe is written for, and its memory plan (python -m flowrl_jax.plan).
    config.plan = hardware.default_config()
    return config


def job_config(config: ConfigDict) -> ConfigDict:
    """The default job: teach a small model countdown by SFT, then improve it with FlowRL, and
    report the test problems' accuracy and diversity before and after (BENCHMARKS.md has a full
    run's figures)."""
    config.workdir = "runs/countdown"
    config.task.name = "countdown"
    config.model.tiny_hidden_size = 128
    config.model.tiny_layers = 4
    # 2 passes over the 9,496 demonstrations (4 per training problem): a partial warm-up on
    # purpose, right on some test problems only. 600 x 64 left a stronger warm-up whose diversity
    # FlowRL lost a little of; 600 x 32 left room that 450 RL steps filled while raising it
    # (tuning runs, BENCHMARKS.md).
    config.sft.steps = 600
    config.sft.batch_size = 32
    config.sft.optimizer.learning_rate = 3e-3
    config.sft.optimizer.warmup_steps = 20
    config.rollout.n = 8
    # The longest canonical answer is 11 tokens + EOS: 12 new tokens sample any of them, and a
    # step decodes no further.
    config.rollout.max_new_tokens = 12
    config.train.steps = 500
    config.train.prompts_per_step = 16
    # 1.5e-4 decaying (cosine) to half of it by the last step: faster early than the constant 1e-4
    # of tuning runs M and the first full run, gentler late, where those lost diversity (tuning
    # runs O, P, BENCHMARKS.md: +16.6 points both; P, this schedule, kept more of the diversity).
    config.optimizer.learning_rate = 1.5e-4
    config.optimizer.schedule = "cosine"
    config.optimizer.min_lr_ratio = 0.5
    # β = 5, not the paper's 15: in 300-step tuning runs on this job (2026-12-02, BENCHMARKS.md)
    # β = 15 and 5 gained the same accuracy, and 5 lost less of the warm-up's diversity; 1.5 kept
    # all of it but gained a third less. From the 600 x 32 warm-up (450 steps) β = 5 raised the
    # diversity and β = 15 lowered it, at the same gain.
    config.algorithm.flowrl.beta = 5.0
    config.checkpoint.every = 50
    # With --config.lora.rank=N: the warm-up fine-tunes the whole (random) model, RL trains the
    # adapters on it. A LoRA warm-up of the random model (rank 8) took the SFT loss from 6.24 to
    # 4.32 only and answered no test problem, so RL had no reward to learn from (2026-12-06).
    config.lora.sft = False
    # Evaluation: every test problem, 16 samples each at temperature 1 (the policy's own
    # distribution, so coverage measures what it would sample).
    config.eval.every = 125
    config.eval.problems = 0
    config.eval.k = 16
    config.eval.pass_k = "1,4,16"
    config.eval.temperature = 1.0
    config.eval.top_p = 1.0
    config.eval.before = True
    config.eval.report = True
    return config


def compare_config(config: ConfigDict) -> ConfigDict:
    """`python -m flowrl_jax.compare`'s default: the default job on a budget that fits seven runs a
    seed (200 RL steps each) and an evaluation with K = 64 samples on the first 200 test problems.
    The comparison evaluates each run at its end itself."""
    config.workdir = "runs/compare"
    config.train.steps = 200
    config.eval.every = 0
    config.eval.before = False
    config.eval.report = False
    config.eval.k = 64
    config.eval.pass_k = "1,4,16,64"
    config.eval.problems = 200
    return config


def from_file(path: str) -> ConfigDict:
    """The config a config file's get_config() returns. Config files are loaded by path (as
    --config=FILE loads them), not imported as a package: a recipe built on another reads it so."""
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config(which: str = "") -> ConfigDict:
    """The default job; `which="base"` (--config=flowrl_jax/config.py:base): the plain engine;
    "compare": the comparison's (flowrl_jax/compare.py)."""
    if which not in ("", "job", "base", "compare"):
        raise ValueError(
            f"config {which!r}: expected 'base', 'compare' or nothing (the default job)"
        )
    if which == "base":
        return base_config()
    job = job_config(base_config())
    return compare_config(job) if which == "compare" else job
