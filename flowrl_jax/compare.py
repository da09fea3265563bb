"""FlowRL against the baselines: one warm-up per seed, every algorithm trained from it on the same RL
budget, evaluated the same way, and the results written by the run.

    python -m flowrl_jax.compare [--workdir=runs/compare] [--seeds=0,1,2]
        [--algorithms=flowrl,flowrl_mean,grpo,ppo,reinforce_pp,dapo,gspo] [--config.KEY=VALUE ...]

The config is the default job's with the comparison's budget on top (flowrl_jax/config.py:compare,
`compare_config`); --config.* overrides apply to every run. Each algorithm runs with its documented
defaults (algorithms/<name>.py); `flowrl_mean` is FlowRL with the length-normalised importance
weight (is_weight='mean'). Each rollout batch is split into two mini-batches, so the second update
of a step is off-policy and the importance weights and clipping rules act.

    <out>/seed_<s>/warmup/     the SFT warm-up (sft/), its evaluation (eval/before.*) and the exact
                               distribution among correct answers (eval/answers.json)
    <out>/seed_<s>/<alg>/      that algorithm's run from the warm-up (a copy of its sft/), its final
                               evaluation (eval/step_<N>.*) and eval/answers.json
    <out>/results.json, results.md, results_*.png, timing.json (each run's seconds)

With --results_doc=docs/RESULTS.md it also writes that document (evaluation/results_doc.py).

A comparison run again continues: a run whose eval/answers.json exists is read, not redone, and an
interrupted one resumes from its checkpoint. Every figure in results.* is read from the runs'
files (evaluation/compare_report.py).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time

import jax
from absl import app, flags
from ml_collections import ConfigDict

from flowrl_jax import algorithms, cli, tasks
from flowrl_jax import mesh as mesh_lib
from flowrl_jax.evaluation import answers, compare_report, report, results_doc, sampled
from flowrl_jax.models import Model, from_config, lora
from flowrl_jax.trainer import run

_SEEDS = flags.DEFINE_string("seeds", "0,1,2", "seeds, comma-separated (one warm-up each)")
_ALGORITHMS = flags.DEFINE_string(
    "algorithms", "flowrl,flowrl_mean,grpo,ppo,reinforce_pp,dapo,gspo", "algorithms to train"
)
_RESULTS_DOC = flags.DEFINE_string(
    "results_doc", "", "also write this document (docs/RESULTS.md) from the results"
)
_CONFIG = None
log = logging.getLogger("flowrl_jax")

# Variants: a name the comparison knows -> (registered algorithm, its settings changed).
VARIANTS = {"flowrl_mean": ("flowrl", {"is_weight": "mean"})}


def parse_list(text: str, what: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise ValueError(f"--{what}={text!r}: give at least one")
    return items


def check_algorithms(names: list[str]) -> None:
    known = set(algorithms.names()) | set(VARIANTS)
    bad = [n for n in names if n not in known]
    if bad:
        raise ValueError(f"--algorithms: unknown {bad}; known: {', '.join(sorted(known))}")


def run_config(base: ConfigDict, seed: int, name: str, workdir: str) -> ConfigDict:
    config = ConfigDict(base.to_dict())
    config.seed, config.workdir = seed, workdir
    algorithm, changes = VARIANTS.get(name, (name, {}))
    config.algorithm.name = algorithm
    if not config.train.minibatch_size:  # two updates per rollout batch (module doc)
        config.train.minibatch_size = config.train.prompts_per_step * config.rollout.n // 2
    for key, value in changes.items():
        config.algorithm[algorithm][key] = value
    return config


def exact_measure(config, model, tokenizer, mesh, task, logz_head=None) -> dict:
    """Teacher-forced log-probs of every enumerated correct answer of the evaluated problems (the
    sampled evaluation's own); for a FlowRL run (logz_head: its head's parameters) also its log Z
    on each problem and the settings that define its fixed point (evaluation/answers.py)."""
    ids, rows = sampled.eval_prompts(task, tokenizer, sampled.periodic_settings(config))
    if not enumerable(task):  # the marker of a finished run all the same
        return {"rows": rows, "logp": None}
    sets = [task.rows[r]["answers"] for r in rows]
    prompts = [x.tolist() for x in ids]
    logp = answers.answer_logprobs(model, tokenizer, prompts, sets, mesh)
    lengths = [[len(t) for t in answers.encode_answers(tokenizer, s)] for s in sets]
    out = {"rows": rows, "answers": sets, "lengths": lengths, "logp": [x.tolist() for x in logp]}
    if logz_head is not None:
        fc = config.algorithm.flowrl
        logz = answers.prompt_logz(
            model, logz_head, config.heads.logz, prompts, tokenizer.pad_token_id, mesh
        )
        out["flowrl"] = {
            "logz": logz.tolist(),
            "beta": fc.beta,
            "group_size": config.rollout.n,
            "reward_normalization": fc.reward_normalization,
            "length_normalize": fc.length_normalize,
        }
    return out


def enumerable(task) -> bool:
    """Whether the task lists every correct answer of each problem (countdown does)."""
    return bool(task.rows) and all("answers" in row for row in task.rows)


def evaluate_model(config, model, tokenizer, mesh, task, name: str, logz_head=None) -> None:
    """eval/<name>.* (sampled, K per problem) and eval/answers.json (exact) of `model`."""
    todo = {task.name: task}
    sampled.periodic(config, model, tokenizer, mesh, config.train.steps, todo, name)
    exact = exact_measure(config, model, tokenizer, mesh, task, logz_head)
    report.write_json(exact, os.path.join(config.workdir, "eval", "answers.json"))


def _done(workdir: str) -> bool:
    return os.path.exists(os.path.join(workdir, "eval", "answers.json"))


def warm_up(base, seed: int, out: str, mesh, eval_task) -> str:
    workdir = os.path.join(out, f"seed_{seed}", "warmup")
    if _done(workdir):
        return workdir
    config = run_config(base, seed, "flowrl", workdir)
    config.train.steps = 0  # SFT only
    result = run.train(config, mesh)
    evaluate_model(config, result.sft.model, _tokenizer(config), mesh, eval_task, "before")
    return workdir


def _tokenizer(config):
    return from_config.model_config(config.model)[1]


def train_from(base, seed: int, name: str, warm: str, out: str, mesh, eval_task) -> str:
    workdir = os.path.join(out, f"seed_{seed}", name)
    if _done(workdir):
        log.info("compare: %s seed %d finished already", name, seed)
        return workdir
    if not os.path.exists(os.path.join(workdir, "sft")):
        os.makedirs(workdir, exist_ok=True)
        shutil.copytree(os.path.join(warm, "sft"), os.path.join(workdir, "sft.partial"))
        os.replace(os.path.join(workdir, "sft.partial"), os.path.join(workdir, "sft"))
    config = run_config(base, seed, name, workdir)
    result = run.train(config, mesh)
    params = result.state.params
    cfg = lora.model_config(result.sft.model.cfg, config.lora)  # RL's adapters, if any
    policy = Model(cfg, params["policy"], mesh=mesh)
    name = f"step_{config.train.steps}"
    logz_head = params.get("logz_head") if config.algorithm.name == "flowrl" else None
    evaluate_model(config, policy, _tokenizer(config), mesh, eval_task, name, logz_head)
    return workdir


def compare(base: ConfigDict, out: str, seeds: list[int], names: list[str]):
    """names: checked by `check_algorithms` already. -> (results, results_doc.Timing)."""
    mesh = mesh_lib.make_mesh(dict(base.mesh))
    eval_task = tasks.get(base.task, base.seed, split="eval")
    if not enumerable(eval_task):
        log.warning(
            "compare: task %r does not enumerate its correct answers; the exact distribution "
            "measures are left out",
            base.task.name,
        )
    runs = {}
    timing = results_doc.Timing(out)

    def timed(key: str, fn, *args) -> str:  # a run read back as finished keeps its first time
        already = _done(os.path.join(out, key))
        t0 = time.perf_counter()
        workdir = fn(*args)
        if not already:
            timing.record(key, time.perf_counter() - t0)
        return workdir

    with jax.set_mesh(mesh):
        for seed in seeds:
            warm = timed(f"seed_{seed}/warmup", warm_up, base, seed, out, mesh, eval_task)
            runs[(seed, "warmup")] = warm
            for name in names:
                runs[(seed, name)] = timed(
                    f"seed_{seed}/{name}", train_from, base, seed, name, warm, out, mesh, eval_task
                )
    machine = report.machine(base.model.dtype, base.model.param_dtype)
    return compare_report.write(out, runs, base.train.steps, base.eval.k, machine), timing


def main(argv) -> None:
    del argv
    cli.setup_logging()
    try:
        base = _CONFIG.value
        seeds = [int(s) for s in parse_list(_SEEDS.value, "seeds")]
        names = parse_list(_ALGORITHMS.value, "algorithms")
        check_algorithms(names)
        out = cli.WORKDIR.value or base.workdir
    except cli.USER_ERRORS as e:
        cli.fail(cli.message(e))
    results, timing = compare(base, out, seeds, names)
    print(compare_report.markdown(results))
    print(f"wrote {out}/results.json, results.md, results_*.png")
    if _RESULTS_DOC.value:
        command = "python -m flowrl_jax.compare " + " ".join(sys.argv[1:])
        print("wrote", results_doc.write(_RESULTS_DOC.value, out, command.strip(), timing))


if __name__ == "__main__":
    _CONFIG = cli.define_config_flag(sys.argv, "compare")
    app.run(main, flags_parser=cli.parse_flags)
