"""Evaluate a policy on datasets: k samples per problem, accuracy and judge-free diversity.

    python -m flowrl_jax.evaluate --hf=DIR --data=a.jsonl,b.parquet [--kind=math] [--k=16]
    python -m flowrl_jax.evaluate --workdir=runs/x [--step=N] --data=... [--out=PREFIX]
    python -m flowrl_jax.evaluate --hf=DIR --gym=basic_arithmetic --problems=100
    python -m flowrl_jax.evaluate --hf=DIR --humaneval --k=16 --pass-k=1,16

Defaults are the paper's: 16 samples per problem at temperature 0.6, top-p 0.95. Per dataset:
mean@k, unbiased pass@j for j in --pass-k (up to k), maj@k, distinct-1/2, distinct correct answers
and correct solution paths per problem, mean pairwise similarity (evaluation/metrics.py). Writes
`<out>.json` (every problem's figures too) and `<out>.md` (one row per dataset).

Correctness is the evaluation reward, not the training one: math rows by Math-Verify against the
gold (0 / 1, in worker processes with a timeout), code rows by their tests in the sandbox,
reasoning-gym rows by the dataset's own scorer. The trainer's periodic evaluation calls
`evaluate_task` on its current parameters. A judge (the paper's LLM diversity rating, or anything
else) plugs in with `--judge=module:function`, called with (prompt, responses) per problem.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import jax

from flowrl_jax import tasks
from flowrl_jax.evaluation import metrics, report
from flowrl_jax.rollout import sampler as sampler_lib
from flowrl_jax.tasks.prompts import encode_prompts

log = logging.getLogger("flowrl_jax")


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    k: int = 16  # samples per problem
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 1024
    pass_k: tuple[int, ...] = (1, 4, 16)
    prompts_per_batch: int = 8  # problems sampled together (k rows each)
    problems: int = 0  # the first N problems of each dataset; 0 = all
    max_prompt_len: int = 0  # longer prompts are left out (and reported); 0 = no limit
    system_prompt: str = ""
    code_workers: int = 8  # sandboxes at once
    # Optional judge (e.g. an LLM rating diversity 1-5, as the paper did): (prompt, responses) ->
    # a score per problem, reported as "judge". CLI: --judge=package.module:function.
    judge: Callable[[str, list[str]], float] | None = None


def verdict(task: tasks.Task, response: str, row: int) -> tuple[bool, str | None]:
    """(correct, final-answer key for maj@k and distinct answers) of one response."""
    data = task.rows[row] if row < len(task.rows) else {}
    if "tests" in data:
        from flowrl_jax.rewards import code

        return code.code_reward(response, data["tests"]) >= 1.0, None
    if task.name.startswith("gym:"):
        from reasoning_gym.utils import extract_answer

        answer = extract_answer(response)
        return task.reward(response, row) >= task.solved, answer and answer.strip()
    if "answer" in data:
        from flowrl_jax.rewards import math_answers

        correct = math_answers.math_verify_reward(response, data["answer"]) >= 1.0
        return correct, math_answers.final_answer(response)
    return task.reward(response, row) >= task.solved, None


@functools.cache
def _sampler(cfg, mesh, pad_id: int) -> sampler_lib.Sampler:
    """One sampler per model shape: it keeps its compiled programs, so periodic evaluation compiles
    once per prompt bucket, not at every evaluation."""
    return sampler_lib.Sampler(cfg, mesh=mesh, pad_id=pad_id)


def sample_responses(task, model, tokenizer, mesh, settings: EvalSettings, rng):
    """-> (rows evaluated, texts [problems][k])."""
    encoded = encode_prompts(task, tokenizer, settings.max_prompt_len, settings.system_prompt)
    ids, rows = encoded.ids, encoded.rows
    if settings.problems:
        ids, rows = ids[: settings.problems], rows[: settings.problems]
    sampler = _sampler(model.cfg, mesh, tokenizer.pad_token_id)
    sp = sampler_lib.SamplingParams(
        max_new_tokens=settings.max_new_tokens,
        n=settings.k,
        temperature=settings.temperature,
        top_p=settings.top_p,
        stop_tokens=(tokenizer.eos_token_id,),
        pad_id=tokenizer.pad_token_id,
    )
    texts, step, t0 = [], settings.prompts_per_batch, time.perf_counter()
    for start in range(0, len(ids), step):
        batch = [x.tolist() for x in ids[start : start + step]]
        out = sampler(model.params, batch, jax.random.fold_in(rng, start), sp)
        decoded = tokenizer.batch_decode(
            [t[m == 1].tolist() for t, m in zip(out.tokens, out.mask)], skip_special_tokens=True
        )
        texts += [decoded[i * sp.n : (i + 1) * sp.n] for i in range(len(batch))]
        done, elapsed = len(texts), time.perf_counter() - t0
        eta = elapsed / done * (len(ids) - done)
        log.info(
            "%s: sampled %d/%d problems (%.1f s, ETA %.0f s)",
            task.name,
            done,
            len(ids),
            elapsed,
            eta,
        )
    return rows, texts


def evaluate_task(task, model, tokenizer, mesh, settings: EvalSettings, rng) -> dict:
    """Sample, judge and score one dataset. -> {"summary": {...}, "problems": [...]}."""
    rows, texts = sample_responses(task, model, tokenizer, mesh, settings, rng)
    return score(task, rows, texts, settings)


def score(task, rows: list[int], texts: list[list[str]], settings: EvalSettings) -> dict:
    """Judge every response (code in `settings.code_workers` sandboxes at once) and compute the
    per-problem metrics and their means. texts[i]: the responses to dataset row rows[i]."""
    flat = [(row, text) for row, group in zip(rows, texts) for text in group]
    workers = settings.code_workers if any("tests" in r for r in task.rows) else 1
    with ThreadPoolExecutor(workers) as pool:
        verdicts = list(pool.map(lambda rt: verdict(task, rt[1], rt[0]), flat))
    problems, start = [], 0
    for row, group in zip(rows, texts):
        judged = verdicts[start : start + len(group)]
        start += len(group)
        ks = tuple(j for j in settings.pass_k if j <= len(group))
        figures = metrics.problem_metrics(
            group, [a for _, a in judged], [c for c, _ in judged], ks=ks
        )
        if settings.judge is not None:
            figures["judge"] = float(settings.judge(task.prompts[row], list(group)))
        problems.append({"row": row, **figures})
    summary = metrics.aggregate([{k: v for k, v in p.items() if k != "row"} for p in problems])
    return {"summary": summary, "problems": problems}


def default_config():
    """config.eval: periodic evaluation during training (written to <workdir>/eval/step_N.*, and
    as eval/<dataset>/<metric> beside the step's metrics)."""
    from ml_collections import ConfigDict

    return ConfigDict(
        {
            "every": 0,  # RL steps between evaluations (and after the last); 0 = never
            # What to evaluate: data files (comma-separated, of `kind`) and/or reasoning-gym
            # datasets; neither = the training task itself.
            "data": "",
            "kind": "math",
            "gym": "",
            "problems": 64,  # the first N problems of each dataset; 0 = all
            "k": 4,  # samples per problem (the paper's final evaluation: 16)
            "pass_k": "1,4",
            "temperature": 0.6,
            "top_p": 0.95,
            "max_new_tokens": 0,  # 0 = rollout.max_new_tokens
        }
    )


def periodic(config, model, tokenizer, mesh, step: int, train_task) -> dict:
    """One evaluation of `model` as config.eval asks. Writes the report (process 0) and returns
    flat metrics {"eval/<dataset>/<metric>": value}."""
    ev = config.eval
    settings = EvalSettings(
        k=ev.k,
        temperature=ev.temperature,
        top_p=ev.top_p,
        max_new_tokens=ev.max_new_tokens or config.rollout.max_new_tokens,
        pass_k=tuple(int(j) for j in str(ev.pass_k).split(",") if j),
        problems=ev.problems,
        system_prompt=config.task.system_prompt,
    )
    todo = eval_datasets(ev.data, ev.kind, "", ev.gym, ev.problems, config.seed)
    todo = todo or {train_task.name.replace(":", "_"): train_task}
    summaries = {}
    for i, (name, task) in enumerate(todo.items()):
        rng = jax.random.fold_in(jax.random.key(config.seed + 1), step * 1000 + i)
        summaries[name] = evaluate_task(task, model, tokenizer, mesh, settings, rng)["summary"]
    if jax.process_index() == 0:
        report.write_report(summaries, os.path.join(config.workdir, "eval", f"step_{step}"))
    return {f"eval/{name}/{k}": v for name, s in summaries.items() for k, v in s.items()}


def eval_datasets(data, kind, fields, gym, problems, seed) -> dict[str, tasks.Task]:
    """name -> task for data files (comma-separated) and reasoning-gym names (comma-separated)."""
    out = {}
    fields = dict(f.split("=", 1) for f in fields.split(",") if f) if fields else {}
    for path in [p for p in (data or "").split(",") if p]:
        config = tasks.default_config()
        config.name, config.path, config.kind = "file", path, kind
        config.fields.update(fields)
        out[os.path.splitext(os.path.basename(path))[0]] = tasks.get(config)
    for name in [g for g in (gym or "").split(",") if g]:
        config = tasks.default_config()
        config.name, config.gym_size = f"gym:{name}", problems or 100
        out[name] = tasks.get(config, seed)
    return out


def load_model(args, mesh):
    if args.hf:
        from flowrl_jax.models import load_hf
        from flowrl_jax.models.from_config import load_tokenizer

        return load_hf(args.hf, mesh=mesh, dtype=args.dtype), load_tokenizer(args.hf)
    from flowrl_jax.export import load_run_policy

    model, tokenizer, _ = load_run_policy(args.workdir, args.step, mesh)
    return model, tokenizer


def datasets(args) -> dict[str, tasks.Task]:
    """name -> task, each built (and its data checked) before any model is loaded."""
    out = eval_datasets(args.data, args.kind, args.fields, args.gym, args.problems, args.seed)
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
    parser.add_argument("--fields", default="", help="e.g. prompt=question,answer=solution")
    parser.add_argument("--gym", help="reasoning-gym datasets, comma-separated")
    parser.add_argument("--humaneval", action="store_true", help="HumanEval (164 problems)")
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--max-new-tokens", type=int, default=1024)
    parser.add_argument("--pass-k", default="1,4,16")
    parser.add_argument("--problems", type=int, default=0, help="first N problems; 0 = all")
    parser.add_argument("--prompts-per-batch", type=int, default=8)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--judge", help="module:function scoring (prompt, responses) per problem")
    parser.add_argument("--out", help="output prefix (default: <workdir or .>/eval/<time>)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    if args.step is not None and not args.workdir:
        parser.error("--step needs --workdir")
    judge = None
    if args.judge:
        module, _, name = args.judge.partition(":")
        judge = getattr(importlib.import_module(module), name or "judge")
    settings = EvalSettings(
        k=args.k,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        pass_k=tuple(int(j) for j in args.pass_k.split(",") if j),
        prompts_per_batch=args.prompts_per_batch,
        problems=args.problems,
        judge=judge,
    )
    todo = datasets(args)  # bad data fails here, before the model loads
    from flowrl_jax import mesh as mesh_lib

    mesh = mesh_lib.make_mesh()
    model, tokenizer = load_model(args, mesh)
    results = {}
    for i, (name, task) in enumerate(todo.items()):
        rng = jax.random.fold_in(jax.random.key(args.seed), i)
        results[name] = evaluate_task(task, model, tokenizer, mesh, settings, rng)
    prefix = args.out or os.path.join(args.workdir or ".", "eval", time.strftime("%Y%m%d-%H%M%S"))
    summaries = {name: r["summary"] for name, r in results.items()}
    json_path, md_path = report.write_report(summaries, prefix)
    with open(md_path) as f:
        print(f.read())
    report.write_json(results, prefix + ".problems.json")
    print(f"wrote {json_path}, {md_path}")
    return results


if __name__ == "__main__":
    main()
