"""Evaluate a policy on datasets: k samples per problem, accuracy and judge-free diversity.

    python -m flowrl_jax.evaluate --hf=DIR --data=a.jsonl,b.parquet [--kind=math] [--k=16]
    python -m flowrl_jax.evaluate --workdir=runs/x [--step=N] --data=... [--out=PREFIX]
    python -m flowrl_jax.evaluate --hf=DIR --gym=basic_arithmetic --problems=100
    python -m flowrl_jax.evaluate --hf=DIR --humaneval --k=16 --pass-k=1,16
    python -m flowrl_jax.evaluate ... --mesh=fsdp=4,tensor=2

Defaults are the paper's: 16 samples per problem at temperature 0.6, top-p 0.95. Per dataset:
mean@k, unbiased pass@j for j in --pass-k (up to k), maj@k, distinct-1/2, distinct correct answers
and correct solution paths per problem, mean pairwise similarity (evaluation/metrics.py). Writes
`<out>.json` (every problem's figures too) and `<out>.md` (one row per dataset). The evaluation
itself, which the trainer's periodic evaluation runs too, is evaluation/sampled.py. A judge (the
paper's LLM diversity rating, or anything else) plugs in with `--judge=module:function`, called
with (prompt, responses) per problem.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import time

import jax

from flowrl_jax import cli, tasks
from flowrl_jax.evaluation import sampled
from flowrl_jax.rollout import sampler as sampler_lib

log = logging.getLogger("flowrl_jax")


def load_model(args, mesh):
    """-> (model, tokenizer, where it came from: {"hf": dir} or {"workdir": dir, "rl_step": N})."""
    if args.hf:
        from flowrl_jax.models import load_hf
        from flowrl_jax.models.from_config import load_tokenizer

        model = load_hf(args.hf, mesh=mesh, dtype=args.dtype)
        return model, load_tokenizer(args.hf), {"hf": os.path.abspath(args.hf)}
    from flowrl_jax.trainer.restore import load_run_policy

    model, tokenizer, record = load_run_policy(args.workdir, args.step, mesh)
    return (
        model,
        tokenizer,
        {"workdir": os.path.abspath(args.workdir), "rl_step": record["rl_step"]},
    )


def run_config(workdir: str | None):
    """The config a run trained with (its config.json), or None for --hf."""
    if not workdir:
        return None
    import json

    from ml_collections import ConfigDict

    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: {workdir} is not a flowrl-jax run directory")
    with open(path) as f:
        return ConfigDict(json.load(f))


def datasets(args, trained=None) -> dict[str, tasks.Task]:
    """name -> task, each built (and its data checked) before any model is loaded. trained: the
    run's config, whose gym problems the evaluation splits leave out."""
    fields = dict(f.split("=", 1) for f in args.fields.split(",") if f)
    train_cfg = trained.task if trained is not None else None
    seed = trained.seed if trained is not None else args.seed
    out = sampled.eval_datasets(
        args.data, args.kind, fields, args.gym, args.problems, seed, train_cfg
    )
    if args.humaneval:
        out["humaneval"] = tasks.get("humaneval")
    if not out:
        raise SystemExit("nothing to evaluate: give --data=FILE[,FILE], --gym=NAME or --humaneval")
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--hf", help="a local Hugging Face checkpoint directory")
    source.add_argument("--workdir", help="a flowrl-jax run directory (its newest checkpoint)")
    parser.add_argument("--step", type=int, help="with --workdir: this checkpoint step")
    parser.add_argument("--data", help="dataset files, comma-separated (.jsonl, .json, .parquet)")
    parser.add_argument("--kind", default="math", choices=["math", "code"])
    parser.add_argument(
        "--fields", default=None, help="e.g. prompt=question,answer=solution (--workdir: the run's)"
    )
    parser.add_argument("--gym", help="reasoning-gym datasets, comma-separated")
    parser.add_argument("--humaneval", action="store_true", help="HumanEval (164 problems)")
    default = sampled.EvalSettings()  # the one definition of the evaluation's defaults
    parser.add_argument("--k", type=int, default=default.k)
    parser.add_argument("--temperature", type=float, default=default.temperature)
    parser.add_argument("--top-p", type=float, default=default.top_p)
    parser.add_argument("--max-new-tokens", type=int, default=default.max_new_tokens)
    parser.add_argument("--pass-k", default=",".join(map(str, default.pass_k)))
    parser.add_argument(
        "--problems", type=int, default=default.problems, help="first N problems; 0 = all"
    )
    parser.add_argument("--prompts-per-batch", type=int, default=default.prompts_per_batch)
    parser.add_argument(
        "--system-prompt", default=None, help="system message (--workdir: the run's own)"
    )
    parser.add_argument(
        "--stop-tokens", default=None, help="stop strings besides EOS (--workdir: the run's own)"
    )
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--judge", help="module:function scoring (prompt, responses) per problem")
    parser.add_argument("--out", help="output prefix (default: <workdir or .>/eval/<time>)")
    parser.add_argument(
        "--mesh", default="", help="axis sizes, e.g. fsdp=4,tensor=2 (default: fsdp=-1)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    if args.step is not None and not args.workdir:
        parser.error("--step needs --workdir")
    try:
        pass_k = sampled.parse_pass_k(args.pass_k, args.k)
    except ValueError as e:
        parser.error(str(e))
    mesh = cli.mesh_arg(parser, args.mesh)  # a bad one fails before anything loads
    # A run is evaluated on the prompts it trained with: its system prompt, field names and stop
    # tokens, unless given here.
    trained = run_config(args.workdir)
    if args.fields is None:
        given = dict(trained.task.fields) if trained is not None else {}
        args.fields = ",".join(f"{k}={v}" for k, v in given.items())
    if args.system_prompt is None:
        args.system_prompt = trained.task.system_prompt if trained is not None else ""
    if args.stop_tokens is None:
        args.stop_tokens = trained.rollout.get("stop_tokens", "") if trained is not None else ""
    judge = None
    if args.judge:
        module, _, name = args.judge.partition(":")
        judge = getattr(importlib.import_module(module), name or "judge")
    settings = sampled.EvalSettings(
        k=args.k,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        pass_k=pass_k,
        prompts_per_batch=args.prompts_per_batch,
        problems=args.problems,
        system_prompt=args.system_prompt,
        stop_tokens=args.stop_tokens,
        judge=judge,
    )
    todo = datasets(args, trained)  # bad data fails here, before the model loads
    from flowrl_jax import mesh as mesh_lib

    mesh = mesh or mesh_lib.make_mesh()
    model, tokenizer, checkpoint = load_model(args, mesh)
    sampler_lib.stop_token_ids(tokenizer, settings.stop_tokens)  # each must be one token
    results = {}
    for i, (name, task) in enumerate(todo.items()):
        rng = jax.random.fold_in(jax.random.key(args.seed), i)
        results[name] = sampled.evaluate_task(task, model, tokenizer, mesh, settings, rng)
    prefix = args.out or os.path.join(args.workdir or ".", "eval", time.strftime("%Y%m%d-%H%M%S"))
    json_path, md_path, problems_path = sampled.write_reports(
        results, prefix, settings, checkpoint | {"seed": args.seed}
    )
    with open(md_path) as f:
        print(f.read())
    print(f"wrote {json_path}, {md_path}, {problems_path}")
    return results


if __name__ == "__main__":
    main()
