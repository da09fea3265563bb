"""reasoning-gym generators as a task: `task.name = "gym:<dataset>"`, `task.gym_size` rows made from
config.seed, the dataset's own config fields from `task.gym_config` (a JSON object).

The reward follows reasoning-gym's own evaluation: the answer is the text of the response's last
<answer>...</answer> (reasoning_gym.utils.extract_answer; None when there is none) and the dataset's
`score_answer(answer, entry)` scores it, in [0, 1] (1 = correct; some datasets give partial credit
for an answer that contains the gold one). Every prompt therefore ends with an instruction to put
the final answer in those tags: without it a model has no way to know the format it is scored on.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import logging
from collections.abc import Mapping

from ml_collections import ConfigDict

from flowrl_jax.tasks.base import Task

log = logging.getLogger("flowrl_jax")

# The output half of reasoning-gym's "default" system prompt (reasoning_gym.utils.SYSTEM_PROMPTS),
# in the user message so that it holds whatever task.system_prompt says.
ANSWER_FORMAT = (
    "Give your final answer in the following format: <answer>answer here</answer>. "
    "Do not explain your reasoning inside the answer tags, provide only the final answer."
)


# The evaluation split's problems are generated from seed + EVAL_SEED_OFFSET.
EVAL_SEED_OFFSET = 7_919


def task(
    name: str, config: ConfigDict, seed: int, split: str = "train", train_size: int = 0
) -> Task:
    """`config.gym_size` rows of the reasoning-gym dataset `name`, generated now (so a bad name or
    config fails before any model is built).

    split="eval": problems from another seed, less every problem whose question is one of the
    training split's (`train_size` rows from `seed`; 0 = config.gym_size), so a run is never tested
    on what it trained on. Generators with few distinct problems may leave fewer rows (logged)."""
    if split not in ("train", "eval"):
        raise ValueError(f"split={split!r}: expected 'train' or 'eval'")
    offset = EVAL_SEED_OFFSET if split == "eval" else 0
    dataset = make_dataset(name, config.gym_size, seed + offset, config.gym_config)
    entries = [dataset[i] for i in range(len(dataset))]
    kept = list(range(len(entries)))
    if split == "eval":
        training = make_dataset(name, train_size or config.gym_size, seed, config.gym_config)
        seen = {training[i]["question"] for i in range(len(training))}
        kept = [i for i in kept if entries[i]["question"] not in seen]
        if len(kept) < len(entries):
            log.info(
                "gym:%s evaluation split: %d of %d generated problems are training problems, left out",
                name,
                len(entries) - len(kept),
                len(entries),
            )
        if not kept:
            raise ValueError(f"gym:{name}: every evaluation problem is also a training problem")
    rows = [
        {
            "prompt": f"{entries[i]['question']}\n\n{ANSWER_FORMAT}",
            "answer": str(entries[i]["answer"]),
            # what score_answer needs: some datasets check the metadata, not the answer
            "entry": entries[i],
            "source": f"gym:{name}:{split}:{i}" if split == "eval" else f"gym:{name}:{i}",
        }
        for i in kept
    ]
    reward = functools.partial(_score, dataset, rows)
    return Task(f"gym:{name}", [r["prompt"] for r in rows], reward, 1.0, rows)


def _score(dataset, rows: list[dict], response: str, row: int) -> float:
    from reasoning_gym.utils import extract_answer

    return float(dataset.score_answer(extract_answer(response), rows[row]["entry"]))


def make_dataset(name: str, size: int, seed: int, gym_config: str | Mapping = "{}"):
    """reasoning_gym.create_dataset(name, size=, seed=, **gym_config), with errors that name the
    config key to fix."""
    from reasoning_gym import create_dataset
    from reasoning_gym.factory import DATASETS

    if name not in DATASETS:
        close = difflib.get_close_matches(name, list(DATASETS), n=5, cutoff=0.5)
        hint = f"close: {', '.join(close)}" if close else f"e.g. {', '.join(sorted(DATASETS)[:8])}"
        raise ValueError(
            f"task.name='gym:{name}': reasoning-gym has no dataset {name!r}; {hint} "
            f"({len(DATASETS)} in reasoning_gym.factory.DATASETS)"
        )
    kwargs = _gym_kwargs(gym_config)
    for key in ("size", "seed"):
        if key in kwargs:
            raise ValueError(
                f"task.gym_config sets {key!r}: use task.gym_size and config.seed, which set it"
            )
    if size < 1:
        raise ValueError(f"task.gym_size={size} must be >= 1")
    try:
        return create_dataset(name, size=size, seed=seed, **kwargs)
    except (TypeError, ValueError, AssertionError) as e:
        # A field the dataset's config does not have (TypeError) or a value its validate() refuses.
        fields = [f.name for f in dataclasses.fields(DATASETS[name][1])]
        raise ValueError(
            f"task.gym_config={json.dumps(kwargs)} for gym:{name}: {type(e).__name__}: {e} "
            f"(its config fields: {', '.join(fields)})"
        ) from e


def _gym_kwargs(gym_config: str | Mapping) -> dict:
    if isinstance(gym_config, Mapping):  # a dict from Python code; the config holds JSON text
        return dict(gym_config)
    try:
        kwargs = json.loads(gym_config or "{}")
    except json.JSONDecodeError as e:
        raise ValueError(f"task.gym_config={gym_config!r} is not valid JSON: {e}") from None
    if not isinstance(kwargs, dict):
        raise ValueError(f"task.gym_config={gym_config!r} must be a JSON object of config fields")
    return kwargs
