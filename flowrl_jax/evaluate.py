"""Evaluate a policy on tasks and datasets: k samples per problem, accuracy and judge-free diversity.

    python -m flowrl_jax.evaluate --workdir=runs/countdown          # the run's own evaluation
    python -m flowrl_jax.evaluate --workdir=runs/x [--step=N] --task=gym:basic_arithmetic
    python -m flowrl_jax.evaluate --hf=DIR --data=a.jsonl,b.parquet [--kind=math] [--k=16]
    python -m flowrl_jax.evaluate --hf=DIR --task=humaneval --k=16 --pass-k=1,16
    python -m flowrl_jax.evaluate ... --mesh=fsdp=4,tensor=2

Tasks are named as `config.task.name` names them, comma-separated: countdown, digits, humaneval,
gym:<dataset> (each its evaluation split: no problem a run trained on) and file (the rows of
--data). With --workdir and neither --task nor --data, the run's own evaluation runs again: what
its periodic evaluation evaluated, on its mesh, with its prompt format, its evaluation settings
(`config.eval`) and its sampling keys, so the figures equal the run's own evaluation of the same
checkpoint (`<workdir>/eval/step_<N>.json`); any flag given changes that setting alone.

Otherwise the defaults are the paper's: 16 samples per problem at temperature 0.6, top-p 0.95. Per
dataset: mean@k, unbiased pass@j for j in --pass-k (up to k), maj@k, distinct-1/2, distinct
correct answers and correct solution paths per problem, mean pairwise similarity
(evaluation/metrics.py). Writes `<out>.json` (every problem's figures too) and `<out>.md` (one
row per dataset). The evaluation itself, which the trainer's periodic evaluation runs too, is
evaluation/sampled.py. A judge (the paper's LLM diversity rating, or anything else) plugs in with
`--judge=module:function`, called with (prompt, responses) per problem.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import os
import time

import jax

from flowrl_jax import cli, storage, tasks
from flowrl_jax.evaluation import sampled
from flowrl_jax.rollout import sampler as sampler_lib
from flowrl_jax.trainer import restore

log = logging.getLogger("flowrl_jax")


def load_model(args, mesh):
    """-> (model, tokenizer, where it came from: {"hf": dir} or {"workdir": dir, "rl_step": N})."""
    if args.hf:
        from flowrl_jax.models import load_hf
        from flowrl_jax.models.from_config import load_tokenizer

        model = load_hf(args.hf, mesh=mesh, dtype=args.dtype)
        return model, load_tokenizer(args.hf), {"hf": os.path.abspath(args.hf)}
    model, tokenizer, record = restore.load_run_policy(args.workdir, args.step, mesh)
    return (
        model,
        tokenizer,
        {"workdir": storage.absolute(args.workdir), "rl_step": record["rl_step"]},
    )


def datasets(args, trained=None) -> dict[str, tasks.Task]:
    """name -> task, each built (and its data checked) before any model is loaded. trained: the
    run's config: its generated tasks' evaluation splits leave out the problems it trained on."""
    fields = dict(f.split("=", 1) for f in args.fields.split(",") if f)
    train_cfg = trained.task if trained is not None else None
    out = sampled.eval_datasets(
        args.data, args.kind, fields, args.task, args.problems or 0, args.seed, train_cfg
    )
    if not out:
        raise ValueError("nothing to evaluate: give --task=NAME[,NAME] or --data=FILE[,FILE]")
    return out


# Flags that are the evaluation's settings (EvalSettings fields): None = not given.
SETTINGS = ("k", "temperature", "top_p", "max_new_tokens", "problems", "prompts_per_batch")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--hf", help="a local Hugging Face checkpoint directory")
    source.add_argument("--workdir", help="a flowrl-jax run directory (its newest checkpoint)")
    parser.add_argument("--step", type=int, help="with --workdir: this checkpoint step")
    parser.add_argument(
        "--task", help="tasks, comma-separated: countdown, digits, humaneval, gym:NAME, file"
    )
    parser.add_argument("--data", help="dataset files, comma-separated (.jsonl, .json, .parquet)")
    parser.add_argument("--kind", default="math", choices=["math", "code"])
    parser.add_argument(
        "--fields", default=None, help="e.g. prompt=question,answer=solution (--workdir: the run's)"
    )
    default = sampled.EvalSettings()  # the one definition of the evaluation's defaults
    for name, kind in zip(SETTINGS, (int, float, float, int, int, int)):
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=kind,
            default=None,
            help=f"default {getattr(default, name)} (--workdir alone: the run's own)",
        )
    parser.add_argument("--pass-k", default=None, help="default: 1,4,16 up to k")
    parser.add_argument(
        "--system-prompt", default=None, help="system message (--workdir: the run's own)"
    )
    parser.add_argument(
        "--stop-tokens", default=None, help="stop strings besides EOS (--workdir: the run's own)"
    )
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--seed", type=int, default=None, help="default: the run's seed, or 0")
    parser.add_argument("--judge", help="module:function scoring (prompt, responses) per problem")
    parser.add_argument("--out", help="output prefix (default: <workdir or .>/eval/<time>)")
    parser.add_argument(
        "--mesh",
        default="",
        help="axis sizes, e.g. fsdp=4,tensor=2 (default: the run's mesh, or fsdp=-1)",
    )
    cli.add_distributed_args(parser)
    args = parser.parse_args(argv)
    if args.step is not None and not args.workdir:
        parser.error("--step needs --workdir")
    return parser, args


def settings_for(args, trained) -> tuple[sampled.EvalSettings, bool]:
    """(the evaluation's settings, whether it is the run's own evaluation). The run's own
    (`--workdir` with neither --task nor --data): the run's periodic evaluation settings; otherwise
    EvalSettings' defaults in the run's prompt format. Flags given override either."""
    own = trained is not None and not args.task and not args.data
    if own:
        base = sampled.periodic_settings(trained)
    else:
        base = sampled.EvalSettings()
        if trained is not None:  # the prompts a run trained with
            base = dataclasses.replace(
                base,
                system_prompt=trained.task.system_prompt,
                stop_tokens=trained.rollout.get("stop_tokens", ""),
            )
    given = {name: getattr(args, name) for name in SETTINGS if getattr(args, name) is not None}
    if args.system_prompt is not None:
        given["system_prompt"] = args.system_prompt
    if args.stop_tokens is not None:
        given["stop_tokens"] = args.stop_tokens
    k = given.get("k", base.k)
    if args.pass_k is not None:
        given["pass_k"] = sampled.parse_pass_k(args.pass_k, k)
    elif "k" in given:
        given["pass_k"] = tuple(j for j in base.pass_k if j <= k) or (1,)
    if args.judge:
        module, _, name = args.judge.partition(":")
        given["judge"] = getattr(importlib.import_module(module), name or "judge")
    return dataclasses.replace(base, **given), own


def main(argv=None) -> dict:
    parser, args = parse_args(argv)
    cli.setup_logging()
    cli.distributed_from_args(args)  # before the mesh: it spans every host's devices
    mesh = cli.mesh_arg(parser, args.mesh)  # a bad one fails before anything loads
    try:
        trained = restore.run_config(args.workdir) if args.workdir else None
        settings, own = settings_for(args, trained)
        if args.seed is None:
            args.seed = trained.seed if trained is not None else 0
        if args.fields is None:  # a run's files are read with its field names
            given = dict(trained.task.fields) if trained is not None else {}
            args.fields = ",".join(f"{k}={v}" for k, v in given.items())
        # Bad data fails here, before the model loads.
        if own:
            todo = sampled.eval_tasks(trained, tasks.get(trained.task, trained.seed))
        else:
            args.problems = settings.problems
            todo = datasets(args, trained)
    except (ValueError, KeyError, FileNotFoundError) as e:
        parser.error(cli.message(e))
    from flowrl_jax import mesh as mesh_lib

    if mesh is None:  # a run is evaluated on its own mesh, as its periodic evaluation was
        mesh = mesh_lib.make_mesh(dict(trained.mesh) if trained is not None else None)
    model, tokenizer, checkpoint = load_model(args, mesh)
    sampler_lib.stop_token_ids(tokenizer, settings.stop_tokens)  # each must be one token
    step = checkpoint.get("rl_step", 0)
    results = {}
    for i, (name, task) in enumerate(todo.items()):
        key = sampled.eval_key(args.seed, step, i)
        results[name] = sampled.evaluate_task(task, model, tokenizer, mesh, settings, key)
    if jax.process_index() != 0:  # every host sampled its share; process 0 writes the reports
        return results
    prefix = args.out or os.path.join(args.workdir or ".", "eval", time.strftime("%Y%m%d-%H%M%S"))
    json_path, md_path, problems_path = sampled.write_reports(
        results, prefix, settings, checkpoint | {"seed": args.seed}
    )
    print(storage.read_text(md_path))
    print(f"wrote {json_path}, {md_path}, {problems_path}")
    return results


if __name__ == "__main__":
    main()
