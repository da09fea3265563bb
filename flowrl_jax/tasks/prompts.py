"""Prompts as token ids: every row through the tokenizer's chat template once, up front, and rows too
long for the run left out with a report (a count, the limit, the longest, and which rows).

Up front rather than per step so that a dataset whose prompts do not fit fails or shrinks at the
start, visibly, not in the sampler at some later step; a 100k-row dataset takes seconds.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
from ml_collections import ConfigDict

log = logging.getLogger("flowrl_jax")


@dataclasses.dataclass(frozen=True)
class EncodedPrompts:
    ids: list[np.ndarray]  # int32 token ids of each kept prompt (chat template applied)
    rows: list[int]  # the task's row of each kept prompt: what task.reward is called with
    report: str  # the log line: kept, dropped, why, which


def prompt_limit(config: ConfigDict) -> int:
    """The longest prompt, in tokens, this run takes: task.max_prompt_len, or 0 for the largest
    rollout prompt bucket (the sampler refuses anything longer)."""
    largest = max(config.rollout.prompt_buckets)
    limit = config.task.max_prompt_len
    if limit < 0:
        raise ValueError(f"task.max_prompt_len={limit} must be >= 0 (0 = the largest bucket)")
    if limit > largest:
        raise ValueError(
            f"task.max_prompt_len={limit} is longer than the largest rollout.prompt_buckets "
            f"({largest}): the sampler could not take such prompts; add a bucket"
        )
    return limit or largest


def encode_prompts(
    task, tokenizer, max_prompt_len: int, system_prompt: str = "", rows=None
) -> EncodedPrompts:
    """Encode the prompts of `task` (or only those of `rows`, a data shard) and keep those of at
    most `max_prompt_len` tokens (0 = all). Logs what was dropped; raises if nothing is left."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    rows = list(range(len(task.prompts))) if rows is None else list(rows)
    prompts = [task.prompts[r] for r in rows]
    ids = []
    # In chunks, kept as int32 arrays: Python lists of ints take about 9 times the memory.
    for start in range(0, len(prompts), 1024):
        texts = [
            tokenizer.apply_chat_template(
                system + [{"role": "user", "content": p}],
                add_generation_prompt=True,
                tokenize=False,
            )
            for p in prompts[start : start + 1024]
        ]
        # The template writes any BOS itself; add_special_tokens would add a second one (as
        # apply_chat_template(tokenize=True) also avoids).
        ids += [
            np.asarray(x, np.int32) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]
        ]
    limit = max_prompt_len or max((len(x) for x in ids), default=0)
    kept = [i for i, x in enumerate(ids) if len(x) <= limit]
    dropped = [i for i, x in enumerate(ids) if len(x) > limit]
    n = len(ids)
    report = f"kept {len(kept)} of {n} prompts"
    if dropped:
        sources = [_source(task, rows[i]) for i in dropped[:5]]
        more = f" and {len(dropped) - 5} more" if len(dropped) > 5 else ""
        longest = max(len(ids[i]) for i in dropped)
        report += (
            f"; dropped {len(dropped)} longer than {limit} tokens (longest {longest}): "
            f"{', '.join(sources)}{more}"
        )
    if not kept:
        shortest = min((len(x) for x in ids), default=0)
        raise ValueError(
            f"task {task.name!r}: no prompt fits: {report}. The shortest has {shortest} tokens; "
            "raise task.max_prompt_len (and rollout.prompt_buckets) or shorten the prompts"
        )
    if len(rows) < len(task.prompts):
        report = f"shard of {len(rows)} rows: {report}"
    (log.warning if dropped else log.info)("task %s: %s", task.name, report)
    return EncodedPrompts([ids[i] for i in kept], [rows[i] for i in kept], report)


def _source(task, i: int) -> str:
    """Where row i came from, for the report: "path:line" where the task knows it."""
    if i < len(task.rows) and "source" in task.rows[i]:
        return task.rows[i]["source"]
    return f"row {i}"
