"""The sampled evaluation: k samples per problem of a policy, scored, summarised and written, for
the `evaluate` CLI and for the trainer's periodic evaluation (`periodic`, with `config.eval`).

Correctness is the evaluation reward, not the training one: math rows by Math-Verify against the
gold (0 / 1, in worker processes with a timeout), code rows by their tests in the sandbox,
reasoning-gym rows by the dataset's own scorer. An optional judge (EvalSettings.judge) scores each
problem's responses.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import jax

from flowrl_jax import rules as R
from flowrl_jax import storage, tasks
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
    stop_tokens: str = ""  # besides the tokenizer's EOS (rollout.stop_tokens' form)
    code_workers: int = 8  # sandboxes at once (and the user's reward functions' threads)
    # Seconds the user's reward functions (task.reward) may take over one dataset's responses
    # before the evaluation stops with an error naming them; 0 = no limit. A run's evaluation
    # takes its train.reward_timeout.
    reward_timeout: float = 0.0
    # The sampler's prompt buckets and decode phases (a run's periodic evaluation takes its
    # rollout's, so its prompts pad as the training prompts do).
    prompt_buckets: tuple[int, ...] = sampler_lib.DEFAULT_PROMPT_BUCKETS
    cache_segments: int = sampler_lib.DEFAULT_CACHE_SEGMENTS
    # Optional judge (e.g. an LLM rating diversity 1-5, as the paper did): (prompt, responses) ->
    # a score per problem, reported as "judge". CLI: --judge=package.module:function.
    judge: Callable[[str, list[str]], float] | None = None


def verdict(task: tasks.Task, response: str, row: int) -> tuple[bool, str | None]:
    """(correct, final-answer key for maj@k and distinct answers) of one response."""
    data = task.rows[row] if row < len(task.rows) else {}
    if task.named_rewards:  # the user's reward functions decide (tasks/user_rewards.py)
        from flowrl_jax.rewards import math_answers

        key = task.answer_key(response, row) if task.answer_key is not None else None
        if key is None and "answer" in data:
            key = math_answers.final_answer(response)
        return task.reward(response, row) >= task.solved, key
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
    if task.answer_key is not None:
        key = task.answer_key(response, row)
        return key is not None, key
    return task.reward(response, row) >= task.solved, None


@functools.cache
def _sampler(cfg, mesh, pad_id: int, buckets: tuple[int, ...], segments: int):
    """One sampler per model shape: it keeps its compiled programs, so periodic evaluation compiles
    once per prompt bucket, not at every evaluation."""
    return sampler_lib.Sampler(
        cfg, mesh=mesh, pad_id=pad_id, prompt_buckets=buckets, cache_segments=segments
    )


def eval_prompts(task, tokenizer, settings: EvalSettings):
    """The problems an evaluation takes: (prompt token ids, their task rows), the first
    `settings.problems` of those that fit."""
    encoded = encode_prompts(task, tokenizer, settings.max_prompt_len, settings.system_prompt)
    ids, rows = encoded.ids, encoded.rows
    if settings.problems:
        ids, rows = ids[: settings.problems], rows[: settings.problems]
    return ids, rows


def sample_responses(task, model, tokenizer, mesh, settings: EvalSettings, rng):
    """-> (rows evaluated, texts [problems][k], each problem's model input as text)."""
    ids, rows = eval_prompts(task, tokenizer, settings)
    sampler = _sampler(
        model.cfg, mesh, tokenizer.pad_token_id, settings.prompt_buckets, settings.cache_segments
    )
    sampling = {
        "n": settings.k,
        "temperature": settings.temperature,
        "top_p": settings.top_p,
        "max_new_tokens": settings.max_new_tokens,
        "stop_tokens": settings.stop_tokens,
    }
    sp = sampler_lib.sampling_params(sampling, tokenizer)
    texts, step, t0 = [], settings.prompts_per_batch, time.perf_counter()
    for start in range(0, len(ids), step):
        batch = [x.tolist() for x in ids[start : start + step]]
        # min_batch: a short last batch reuses the full batch's compiled program.
        out = sampler(model.params, batch, jax.random.fold_in(rng, start), sp, min_batch=step)
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
    return rows, texts, tokenizer.batch_decode([x.tolist() for x in ids])


def evaluate_task(task, model, tokenizer, mesh, settings: EvalSettings, rng) -> dict:
    """Sample, judge and score one dataset.
    -> {"summary": {...}, "problems": [figures...], "details": [prompt, gold, responses...]}."""
    rows, texts, inputs = sample_responses(task, model, tokenizer, mesh, settings, rng)
    result = score(task, rows, texts, settings)
    for detail, text in zip(result["details"], inputs):
        detail["input"] = text  # exactly what the model was given: template, system prompt
    return result


def score(task, rows: list[int], texts: list[list[str]], settings: EvalSettings) -> dict:
    """Judge every response (code in `settings.code_workers` sandboxes at once) and compute the
    per-problem metrics and their means. texts[i]: the responses to dataset row rows[i]."""
    flat = [(row, text) for row, group in zip(rows, texts) for text in group]
    threaded = task.named_rewards or any("tests" in r for r in task.rows)
    workers = settings.code_workers if threaded else 1
    pool = ThreadPoolExecutor(workers)
    try:
        futures = [pool.submit(verdict, task, text, row) for row, text in flat]
        deadline = time.monotonic() + settings.reward_timeout if settings.reward_timeout else None
        verdicts = []
        for (row, _), future in zip(flat, futures):
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                verdicts.append(future.result(timeout=left))
            except FutureTimeout:
                names = ", ".join(repr(r.name) for r in task.named_rewards) or "the reward"
                raise RuntimeError(
                    f"{task.name}: the reward function {names} did not return within "
                    f"{settings.reward_timeout} s (train.reward_timeout; dataset row {row})"
                ) from None
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    problems, details, start = [], [], 0
    for row, group in zip(rows, texts):
        judged = verdicts[start : start + len(group)]
        start += len(group)
        ks = tuple(j for j in settings.pass_k if j <= len(group))
        data = task.rows[row] if row < len(task.rows) else {}
        # A task that enumerates each problem's correct answers (countdown) gets coverage.
        answer_set = data.get("answers") if task.answer_key is not None else None
        figures = metrics.problem_metrics(
            group, [a for _, a in judged], [c for c, _ in judged], ks=ks, answer_set=answer_set
        )
        if settings.judge is not None:
            figures["judge"] = float(settings.judge(task.prompts[row], list(group)))
        problems.append({"row": row, **figures})
        # What a person needs to read the figures: the prompt, the gold, responses and verdicts.
        details.append(
            {
                "row": row,
                "source": data.get("source"),
                "prompt": task.prompts[row],
                "gold": data.get("answer", data.get("tests", data.get("answers"))),
                "responses": [
                    {"text": text, "correct": bool(c), "answer": a}
                    for text, (c, a) in zip(group, judged)
                ],
            }
        )
    summary = metrics.aggregate([{k: v for k, v in p.items() if k != "row"} for p in problems])
    return {"summary": summary, "problems": problems, "details": details}


def settings_record(settings: EvalSettings) -> dict:
    """The sampling and scoring settings, for the reports."""
    record = dataclasses.asdict(settings)
    record["judge"] = getattr(settings.judge, "__qualname__", None) if settings.judge else None
    return record


def write_reports(results: dict, prefix: str, settings: EvalSettings, checkpoint: dict):
    """<prefix>.json / .md (one summary row per dataset; the markdown ends with the checkpoint and
    the sampling settings) and <prefix>.problems.json (every problem: figures, prompt, gold,
    responses with their verdicts, under the checkpoint and the settings). -> the three paths."""
    summaries = {name: r["summary"] for name, r in results.items()}
    json_path, md_path = report.write_report(summaries, prefix)
    record = settings_record(settings)
    lines = [
        "",
        f"checkpoint: {', '.join(f'{k} {v}' for k, v in checkpoint.items())}",
        "sampling: "
        + ", ".join(
            f"{k} {record[k]!r}"
            for k in ("k", "temperature", "top_p", "max_new_tokens", "system_prompt", "stop_tokens")
        ),
    ]
    storage.append_text(md_path, "\n".join(lines) + "\n")
    problems = {
        "checkpoint": checkpoint,
        "settings": record,
        "datasets": {
            name: {
                "summary": r["summary"],
                "problems": [p | d for p, d in zip(r["problems"], r["details"])],
            }
            for name, r in results.items()
        },
    }
    problems_path = report.write_json(problems, prefix + ".problems.json")
    return json_path, md_path, problems_path


def default_config():
    """config.eval: periodic evaluation during training (written to <workdir>/eval/step_N.*, and
    as eval/<dataset>/<metric> beside the step's metrics)."""
    from ml_collections import ConfigDict

    return ConfigDict(
        {
            "every": 0,  # RL steps between evaluations (and after the last); 0 = never
            # What to evaluate: data files (comma-separated, of `kind`) and/or tasks by the names
            # task.name takes (comma-separated: countdown, digits, humaneval, gym:<dataset>; a
            # generated task's evaluation split); neither = the training task's evaluation split.
            "data": "",
            "kind": "math",
            "tasks": "",
            # Cheaper than the CLI's final evaluation (EvalSettings: every problem, k = 16), as it
            # runs during training; the sampling itself is the same.
            "problems": 64,  # the first N problems of each dataset; 0 = all
            "k": 4,  # samples per problem
            "pass_k": "1,4",
            "temperature": EvalSettings.temperature,
            "top_p": EvalSettings.top_p,
            "max_new_tokens": 0,  # 0 = rollout.max_new_tokens
            # Evaluate the starting policy (after the SFT warm-up, if any) before the first RL
            # step, as <workdir>/eval/before.*: the "before" of the report.
            "before": False,
            # At the end: <workdir>/report.md, report.json and report_*.png, the evaluation
            # before RL against the last one (needs before; evaluation/job_report.py).
            "report": False,
        }
    )


RULES = {
    "every": R.COUNT,
    "kind": R.OneOf(("math", "code")),
    "problems": R.COUNT,
    "k": R.POSITIVE_INT,
    "temperature": R.NON_NEGATIVE,
    "top_p": R.PROBABILITY,
    "max_new_tokens": R.COUNT,
}


def periodic_settings(config) -> EvalSettings:
    """config.eval as EvalSettings, with the training prompts' format: the same system prompt,
    stop tokens and prompt-length limit as the rollouts."""
    from flowrl_jax.tasks import prompt_limit

    ev = config.eval
    return EvalSettings(
        k=ev.k,
        temperature=ev.temperature,
        top_p=ev.top_p,
        max_new_tokens=ev.max_new_tokens or config.rollout.max_new_tokens,
        pass_k=parse_pass_k(ev.pass_k, ev.k, "eval.pass_k"),
        problems=ev.problems,
        max_prompt_len=prompt_limit(config),
        system_prompt=config.task.system_prompt,
        stop_tokens=config.rollout.stop_tokens,
        reward_timeout=config.train.reward_timeout if config.task.get("reward", "") else 0.0,
        prompt_buckets=tuple(config.rollout.prompt_buckets),
        cache_segments=config.rollout.cache_segments,
    )


def parse_pass_k(text: str, k: int, what: str = "--pass-k") -> tuple[int, ...]:
    """'1,4,16' -> (1, 4, 16); a value above k (or below 1) is an error, not dropped."""
    try:
        values = tuple(int(j) for j in str(text).split(",") if j.strip())
    except ValueError:
        raise ValueError(f"{what}={text!r}: expected comma-separated integers") from None
    bad = [j for j in values if not 1 <= j <= k]
    if bad:
        raise ValueError(f"{what}={text!r}: {bad} not in 1..k={k} (pass@j needs j <= k samples)")
    return values


def eval_tasks(config, train_task: tasks.Task) -> dict[str, tasks.Task]:
    """What config.eval evaluates, built now (bad data fails before training starts): its data
    files, read with the training task's field names, and its named tasks, each the evaluation
    split (no training problem); neither = the training task, a generated one through its
    evaluation split."""
    periodic_settings(config)  # eval.pass_k and the rest are checked now too
    ev, task_cfg = config.eval, config.task
    fields = dict(task_cfg.fields)
    names = ev.get("tasks", "")  # a run from before eval.tasks has none
    todo = eval_datasets(ev.data, ev.kind, fields, names, ev.problems, config.seed, task_cfg)
    if todo:
        return todo
    name = dataset_name(train_task.name)
    if task_cfg.name.startswith("gym:") or task_cfg.name == "countdown":
        return {name: named_task(task_cfg.name, ev.problems, config.seed, task_cfg)}
    log.info("evaluation: no eval.data or eval.tasks given, so it samples the training prompts")
    return {name: train_task}


def dataset_name(task_name: str) -> str:
    """A task's name as its reports and metrics key it (gym:x -> gym_x)."""
    return task_name.replace(":", "_")


def named_task(name: str, problems: int, seed: int, train_cfg=None) -> tasks.Task:
    """The evaluation split of the task `name` (task.name's scheme: countdown, digits, humaneval,
    gym:<dataset>): a generated task's problems that training never drew. The task a run trained
    on (`train_cfg`) is scored by the run's own reward functions, where it has them
    (task.reward)."""
    if name == "file":
        raise ValueError("task 'file' is read from data files: give them with --data / eval.data")
    if name.startswith("gym:"):
        task = gym_eval_task(train_cfg, name, problems, seed)
    else:
        task = tasks.get(name, seed, split="eval")
    if train_cfg is not None and train_cfg.name == name and train_cfg.get("reward", ""):
        task = tasks.user_rewards.attach(task, train_cfg.reward, train_cfg.reward_weights)
    return task


def gym_eval_task(train_cfg, name: str, problems: int, seed: int) -> tasks.Task:
    """The evaluation split of gym dataset `name`: the training run's dataset config when it
    trained on the same dataset, and none of its `train_cfg.gym_size` training problems."""
    config = tasks.default_config()
    config.name, config.gym_size = name, problems or 100
    same = train_cfg is not None and train_cfg.name == name
    if same:
        config.gym_config = train_cfg.gym_config
    train_size = train_cfg.gym_size if same else config.gym_size
    return tasks.get(config, seed, split="eval", train_size=train_size)


def eval_key(seed: int, rl_step: int, dataset: int) -> jax.Array:
    """The sampling key of dataset number `dataset` in an evaluation after RL step `rl_step`: the
    same for the trainer's periodic evaluation and the CLI, so the CLI reproduces a run's figures."""
    base = jax.random.fold_in(jax.random.key(seed + 1), rl_step)
    return jax.random.fold_in(base, dataset)


def periodic(
    config, model, tokenizer, mesh, step: int, todo: dict[str, tasks.Task], name: str = ""
) -> dict:
    """One evaluation of `model` on `todo` (`eval_tasks`) after RL step `step`. Writes the reports
    (process 0) as <workdir>/eval/<name or step_N>.* and returns flat metrics
    {"eval/<dataset>/<metric>": value}."""
    settings = periodic_settings(config)
    results = {}
    for i, (dataset, task) in enumerate(todo.items()):
        results[dataset] = evaluate_task(task, model, tokenizer, mesh, settings, eval_key(config.seed, step, i))
    if jax.process_index() == 0:
        prefix = os.path.join(config.workdir, "eval", name or f"step_{step}")
        write_reports(results, prefix, settings, {"workdir": config.workdir, "rl_step": step})
    return {f"eval/{d}/{k}": v for d, r in results.items() for k, v in r["summary"].items()}


def eval_datasets(data, kind, fields, names, problems, seed, train_cfg=None) -> dict[str, tasks.Task]:
    """dataset name -> task for data files (comma-separated, rows named as `fields` says) and task
    names (comma-separated; their evaluation splits, see `named_task`)."""
    out = {}
    for path in [p for p in (data or "").split(",") if p]:
        config = tasks.default_config()
        config.name, config.path, config.kind = "file", path, kind
        config.fields.update(fields or {})
        out[os.path.splitext(os.path.basename(path))[0]] = tasks.get(config)
    for name in [n.strip() for n in (names or "").split(",") if n.strip()]:
        if name == "file" and data:
            continue  # the files above
        out[dataset_name(name)] = named_task(name, problems, seed, train_cfg)
    return out
