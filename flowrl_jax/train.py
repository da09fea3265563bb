"""The main job.

    python -m flowrl_jax.train                                  # the default job (tiny model, CPU)
    python -m flowrl_jax.train --config=configs/default.py --config.mesh.tensor=2
    python -m flowrl_jax.train --config=flowrl_jax/config.py:base   # the plain engine, two steps
    python -m flowrl_jax.train --config=configs/hf_checkpoint.py --config.model.checkpoint=/ckpt \
        --workdir=runs/qwen7b

Builds the mesh, loads (or builds) the policy and tokenizer sharded on it, and trains in the
workdir, resuming from its latest checkpoint (trainer/run.py): the SFT warm-up where `sft` asks for
one, an evaluation before RL (`eval.before`), `train.steps` RL steps of `algorithm.name` (flowrl by
default; grpo, ppo, reinforce_pp, dapo, gspo) on `task.name` with periodic evaluation, and the
before / after report (`eval.report`). The default job does all of it on the built-in countdown
task (config.py), with no download. `--config.smoke.enabled=True` first checks the foundation end
to end: greedy decode with the KV cache, a sampled group whose log-probs match a recomputation, HF
export and sharded reload.

Run the same command again to resume; SIGTERM saves a checkpoint and exits with status 0.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import time

import jax
import numpy as np
from absl import app

from flowrl_jax import cli, storage
from flowrl_jax import mesh as mesh_lib
from flowrl_jax.evaluation import job_report
from flowrl_jax.models import from_config, load_hf, save_hf
from flowrl_jax.rollout import sampler as sampler_lib
from flowrl_jax.rollout import token_logprobs
from flowrl_jax.trainer import run as run_lib

_CONFIG = None  # the --config flag, defined when this module runs as the program (below)
log = logging.getLogger("flowrl_jax")


def init_distributed(config) -> None:
    cli.init_distributed(
        config.enabled, config.coordinator_address, config.num_processes, config.process_id
    )


def smoke(config, mesh, model, tokenizer, t_build: float) -> dict:
    """The foundation run; returns the figures it prints."""
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 12 + 30?"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    # Pad the batch to the mesh's data-parallel size so it splits evenly.
    batch = tokenizer(
        [prompt] * mesh_lib.batch_size_divisor(mesh), return_tensors="np", padding=True
    )
    steps = config.smoke.new_tokens
    t0 = time.perf_counter()
    new = model.generate_greedy(batch["input_ids"], batch["attention_mask"], steps=steps)
    t_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    new = model.generate_greedy(batch["input_ids"], batch["attention_mask"], steps=steps)
    t_decode = time.perf_counter() - t0
    rollout = sample_and_recompute(config, model, tokenizer, prompt, mesh)
    # The HF writer writes local files: a workdir on object storage gets a local scratch copy.
    where = config.workdir if not storage.is_remote(config.workdir) else tempfile.mkdtemp()
    export = save_hf(model, os.path.join(where, "smoke_export"), tokenizer=tokenizer, overwrite=True)
    reloaded = load_hf(export, mesh=mesh, dtype=model.cfg.dtype)
    ref = np.asarray(model(batch["input_ids"], batch["attention_mask"]))
    got = np.asarray(reloaded(batch["input_ids"], batch["attention_mask"]))
    return {
        "model": f"{model.cfg.family}, {model.num_params:,} params, {model.cfg.dtype}",
        "mesh": str(dict(mesh.shape)),
        "build/load (s)": f"{t_build:.2f}",
        "greedy decode, first call incl. compile (s)": f"{t_first:.2f}",
        "greedy decode tokens/s (compiled)": f"{new.size / t_decode:,.0f}",
        "completion of row 0": repr(tokenizer.decode(new[0])),
        **rollout,
        "export": export,
        "export -> reload max |logit diff|": f"{np.abs(ref - got).max():.2e}",
    }


def sample_and_recompute(config, model, tokenizer, prompt: str, mesh) -> dict:
    """Sample config.rollout.n responses to `prompt` and recompute their log-probs in one pass."""
    sampler, sp = sampler_lib.from_config(
        model.cfg, config.rollout, mesh, tokenizer, config.smoke.new_tokens
    )
    ids = tokenizer(prompt)["input_ids"]
    t0 = time.perf_counter()
    out = sampler(model.params, [ids], jax.random.key(config.seed), sp)
    t_sample = time.perf_counter() - t0
    seq, seq_mask = out.sequences()
    rows = mesh_lib.batch_size_divisor(mesh)
    pad = -len(seq) % rows  # the recomputation batch must divide over the mesh too
    seq, seq_mask = np.pad(seq, ((0, pad), (0, 0))), np.pad(seq_mask, ((0, pad), (0, 0)))
    seq_mask[len(out.tokens) :, -1] = 1
    recomputed = jax.jit(token_logprobs, static_argnums=(0, 4))(
        model.cfg, model.params, seq, seq_mask, sp.temperature
    )
    P = out.prompt_tokens.shape[1]
    diff = np.abs(np.asarray(recomputed)[: len(out.tokens), P:] - out.logprobs)[out.mask == 1]
    return {
        f"sampled {sp.n} x {sp.max_new_tokens} tokens at T={sp.temperature} incl. compile (s)": (
            f"{t_sample:.2f}"
        ),
        "sampled response lengths": str(out.mask.sum(1).tolist()),
        "sampled vs recomputed max |log-prob diff|": f"{diff.max():.2e}",
    }


def main(argv) -> None:
    del argv
    cli.setup_logging()
    try:
        config = _CONFIG.value  # a --config=FILE is loaded (and overridden) here
        config.workdir = cli.WORKDIR.value or config.workdir  # a load that failed raises here
    except Exception as e:  # noqa: BLE001 -- whatever ml_collections raises, the user's input is bad
        cli.config_error(e, sys.argv)
    with contextlib.ExitStack() as held:
        try:
            # Everything the user can get wrong fails here, before any weight is read or any
            # program compiles: the mesh, sizes, the task and its data, the workdir (another
            # model's or algorithm's, or another live job's).
            init_distributed(config.distributed)
            mesh = mesh_lib.make_mesh(dict(config.mesh))
            checked = held.enter_context(run_lib.started(config, mesh))
        except cli.USER_ERRORS as e:
            if os.environ.get("FLOWRL_JAX_TRACEBACK"):
                raise
            cli.fail(cli.message(e))
        figures, result = _build_and_train(config, mesh, checked)
    if jax.process_index() != 0:
        return
    if figures:
        width = max(map(len, figures))
        print("\nflowrl-jax: decoder, sampler, log-probs, export")
        for key, value in figures.items():
            print(f"  {key:<{width}}  {value}")
    print_summary(config, result)


def print_summary(config, result: run_lib.RunResult) -> None:
    """What the run did, in a few lines: the warm-up, the RL steps, the report."""
    warm = result.sft
    if warm is not None:
        done = f"steps {warm.steps - len(warm.history) + 1}-{warm.steps}" if warm.history else ""
        losses = [m["sft/loss"] for m in warm.history]
        print(
            f"\nSFT warm-up: {done or 'loaded'} of {warm.total}"
            + (f", loss {losses[0]:.3f} -> {losses[-1]:.3f}" if losses else "")
            + f" (workdir {config.workdir}/sft)"
        )
        if warm.preempted:
            print(f"stopped by {warm.preempted} during SFT; run the same command to resume")
            return
    if not result.history and not config.train.steps:
        print(
            "no RL steps (train.steps=0): export the warm-up with python -m flowrl_jax.export --sft"
        )
        return
    if not result.history:
        print(
            f"\nnothing to train: {config.workdir} already holds RL step {result.last_step} of "
            f"{config.train.steps}; raise --config.train.steps to go on, or pass a new --workdir"
        )
        return
    print(
        f"\n{config.algorithm.name}: RL steps {result.first_step + 1}-{result.last_step} of "
        f"{config.train.steps} on the {config.task.name} task (workdir {config.workdir})"
    )
    shown = list(enumerate(result.history, result.first_step + 1))
    if len(shown) > 8:  # the first steps and the last ones; metrics.jsonl has them all
        shown = shown[:3] + [None] + shown[-4:]
    for item in shown:
        if item is None:
            print("  ...")
            continue
        i, m = item
        print(
            f"  step {i}: loss {m['loss']:.4f}  reward {m['reward/mean']:.3f}  "
            f"grad norm {m['grad_norm']:.3f}  {m['time/step']:.1f} s"
            + (f" (+{m['time/compile']:.1f} s compile)" if m.get("time/compile", 0) > 0.05 else "")
        )
    if result.preempted:
        print(
            f"stopped by {result.preempted} after step {result.last_step}; "
            "run the same command to resume"
        )
    if result.report is not None:
        print("\n" + job_report.markdown(result.report))
        print(f"report: {config.workdir}/report.md, report.json, report_*.png")


def _build_and_train(config, mesh, checked: run_lib.Checked):
    with jax.set_mesh(mesh):  # the context mesh: bare PartitionSpecs resolve against it
        t0 = time.perf_counter()
        model, tokenizer = from_config.build(config.model, mesh, config.seed)
        figures = {}
        if config.smoke.enabled:
            figures = smoke(config, mesh, model, tokenizer, time.perf_counter() - t0)
        # The trainer starts from the same (immutable) parameters the smoke checks used.
        return figures, run_lib.run(config, mesh, model, tokenizer, checked.task, checked)


if __name__ == "__main__":
    _CONFIG = cli.define_config_flag(sys.argv)
    app.run(main, flags_parser=cli.parse_flags)
