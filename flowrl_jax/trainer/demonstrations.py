"""The SFT warm-up's demonstrations: read from files (`sft.path`) or drawn from the task's own correct
answers (a task with `Task.demonstrations`), then tokenized once, before anything compiles.

A demonstration is {"messages": the prompt as chat messages, "response": str, "source": "path:line"};
rows longer than `sft.max_len` tokens are dropped and counted in the log, never silently.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from flowrl_jax.tasks.files import DataError, read_rows

log = logging.getLogger("flowrl_jax")

FIELDS = {"prompt": "prompt", "response": "response", "messages": "messages"}


@dataclasses.dataclass(frozen=True)
class Encoded:
    prompts: list[list[int]]  # token ids of each prompt, chat template and generation prompt
    responses: list[list[int]]  # token ids of each response, EOS last
    sources: list[str]  # where each row came from ("path:line", "countdown:17#2")

    def __len__(self) -> int:
        return len(self.prompts)

    def order(self, seed: int, step: int, size: int) -> np.ndarray:
        """The rows of optimiser step `step` (from 0): consecutive slices of one seeded permutation
        of the rows per epoch, epochs back to back. A pure function of (seed, step), so a resumed
        warm-up draws exactly the batches it would have drawn."""
        n = len(self)
        positions = np.arange(step * size, (step + 1) * size)
        epochs = positions // n
        out = np.empty(size, np.int64)
        for e in np.unique(epochs):
            perm = np.random.default_rng([seed, int(e)]).permutation(n)
            out[epochs == e] = perm[positions[epochs == e] % n]
        return out


def load(paths: str, fields: dict | None = None) -> list[dict]:
    """Demonstrations of the comma-separated .jsonl / .json / .parquet `paths`, every row checked
    now: a `prompt` and a `response` string, or chat `messages` whose last one is the assistant's
    response. `fields` renames (as task.fields does for task data)."""
    names = FIELDS | dict(fields or {})
    parts = [p.strip() for p in str(paths).split(",") if p.strip()]
    if not parts:
        raise DataError("sft.path is empty: give a demonstrations file")
    return read_rows(parts, lambda source, record: _demonstration(source, record, names))


def _demonstration(source: str, record, names: dict) -> dict:
    if not isinstance(record, dict):
        raise DataError(f"{source}: a row must be a JSON object, not {type(record).__name__}")
    if names["messages"] in record:
        messages = record[names["messages"]]
        ok = (
            isinstance(messages, list)
            and len(messages) >= 2
            and all(
                isinstance(m, dict) and isinstance(m.get("content"), str) and "role" in m
                for m in messages
            )
        )
        if not ok or messages[-1]["role"] != "assistant":
            raise DataError(
                f"{source}: field {names['messages']!r} must be a list of "
                '{"role", "content"} messages ending with the assistant\'s response'
            )
        prompt, response = messages[:-1], messages[-1]["content"]
    else:
        for key in ("prompt", "response"):
            if names[key] not in record:
                raise DataError(
                    f"{source}: missing field {names[key]!r} (fields: "
                    f"{', '.join(map(str, record))}); sft.fields.{key} names the field that "
                    f"holds the {key}, or give chat {names['messages']!r}"
                )
        prompt = record[names["prompt"]]
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError(
                f"{source}: field {names['prompt']!r} (the prompt) must be a non-empty string"
            )
        prompt, response = [{"role": "user", "content": prompt}], record[names["response"]]
    if not isinstance(response, str) or not response.strip():
        raise DataError(f"{source}: the response must be a non-empty string, not {response!r}")
    return {"messages": prompt, "response": response, "source": source}


def encode(rows: list[dict], tokenizer, max_len: int, system_prompt: str = "") -> Encoded:
    """Token ids of each demonstration: the prompt through the chat template (generation prompt
    added), the response followed by EOS. Rows over `max_len` tokens are dropped and counted in the
    log, never silently; if none is left that is an error."""
    prompts, responses, sources, dropped = [], [], [], []
    for row in rows:
        messages = row["messages"]
        if system_prompt and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": system_prompt}, *messages]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        p = tokenizer(text, add_special_tokens=False)["input_ids"]
        r = tokenizer(row["response"], add_special_tokens=False)["input_ids"]
        r = r + [tokenizer.eos_token_id]
        if len(p) + len(r) > max_len:
            dropped.append((len(p) + len(r), row["source"]))
            continue
        prompts.append(p)
        responses.append(r)
        sources.append(row["source"])
    if dropped:
        longest = max(n for n, _ in dropped)
        log.warning(
            "SFT: dropped %d of %d demonstrations over sft.max_len=%d tokens (longest %d; first: %s)",
            len(dropped),
            len(rows),
            max_len,
            longest,
            ", ".join(s for _, s in dropped[:3]),
        )
    if not prompts:
        raise DataError(f"SFT: every demonstration is longer than sft.max_len={max_len} tokens")
    return Encoded(prompts, responses, sources)


def rows_for(config, task) -> list[dict]:
    """The warm-up's demonstrations for `config`: sft.path's files, else the task's own."""
    cfg = config.sft
    if cfg.path:
        return load(cfg.path, dict(cfg.fields))
    if task.demonstrations is None:
        raise ValueError(
            f"sft.steps={cfg.steps}, sft.epochs={cfg.epochs}: the warm-up needs demonstrations, "
            f"and task {task.name!r} supplies none; give sft.path (jsonl/json/parquet rows of "
            "prompt + response, or chat messages)"
        )
    return task.demonstrations(config.seed, cfg.per_problem, cfg.skew)


def max_len(config) -> int:
    """sft.max_len, or (0) the longest prompt the sampler takes plus rollout.max_new_tokens."""
    from flowrl_jax.tasks import prompt_limit

    return config.sft.max_len or prompt_limit(config) + config.rollout.max_new_tokens
