"""Supervised fine-tuning on demonstrations (issue #19's warm-up before RL): the loss and its batch.

The loss is the mean cross-entropy over the response tokens only, the prompt and the padding masked
out: `transformers`' causal-LM loss with the other labels at -100 (tested equal, loss and gradient).
It runs through the chunked log-prob path, so the [B, T, V] float32 logits never exist.

Rows are right-padded (prompt, response, padding): positions then run 0.. on every row, as a
reference implementation without position ids computes them.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from flowrl_jax.rollout.logprobs import token_logprobs


def loss(cfg, params, tokens, mask, loss_mask, chunk: int = 256):
    """tokens, mask, loss_mask [B, T]; loss_mask marks the response tokens to predict. -> (mean
    negative log-likelihood over them, number of them)."""
    logp = token_logprobs(cfg, params, tokens, mask, 1.0, chunk)
    weight = loss_mask.astype(jnp.float32) * mask.astype(jnp.float32)
    count = jnp.sum(weight)
    return -jnp.sum(logp * weight) / jnp.maximum(count, 1.0), count


def batch(prompts: list[list[int]], responses: list[list[int]], length: int, pad_id: int = 0):
    """Token-id lists -> (tokens, mask, loss_mask) [B, length] int32, each row prompt + response
    right-padded; a row longer than `length` is an error (the data reader drops and counts them)."""
    B = len(prompts)
    tokens = np.full((B, length), pad_id, np.int32)
    mask = np.zeros((B, length), np.int32)
    loss_mask = np.zeros((B, length), np.int32)
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        n = len(p) + len(r)
        if n > length:
            raise ValueError(
                f"row {i}: {n} tokens (prompt {len(p)} + response {len(r)}) > {length}"
            )
        if not r:
            raise ValueError(f"row {i}: an empty response has nothing to learn")
        tokens[i, :n] = list(p) + list(r)
        mask[i, :n] = 1
        loss_mask[i, len(p) : n] = 1
    return tokens, mask, loss_mask


# --- demonstrations from files -----------------------------------------------------------------

FIELDS = {"prompt": "prompt", "response": "response", "messages": "messages"}


def load(paths: str, fields: dict | None = None) -> list[dict]:
    """Demonstrations of the comma-separated .jsonl / .json / .parquet `paths`, every row checked
    now: a `prompt` and a `response` string, or chat `messages` whose last one is the assistant's
    response. -> [{"messages": [...], "response": str, "source": "path:line"}]. `fields` renames
    (as task.fields does for task data)."""
    from flowrl_jax.tasks.files import DataError, read_rows

    names = FIELDS | dict(fields or {})
    parts = [p.strip() for p in str(paths).split(",") if p.strip()]
    if not parts:
        raise DataError("sft.path is empty: give a demonstrations file")
    return read_rows(parts, lambda source, record: _demonstration(source, record, names, DataError))


def _demonstration(source: str, record, names: dict, error) -> dict:
    if not isinstance(record, dict):
        raise error(f"{source}: a row must be a JSON object, not {type(record).__name__}")
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
            raise error(
                f"{source}: field {names['messages']!r} must be a list of "
                '{"role", "content"} messages ending with the assistant\'s response'
            )
        prompt, response = messages[:-1], messages[-1]["content"]
    else:
        for key in ("prompt", "response"):
            if names[key] not in record:
                raise error(
                    f"{source}: missing field {names[key]!r} (fields: "
                    f"{', '.join(map(str, record))}); sft.fields.{key} names the field that "
                    f"holds the {key}, or give chat {names['messages']!r}"
                )
        prompt = record[names["prompt"]]
        if not isinstance(prompt, str) or not prompt.strip():
            raise error(
                f"{source}: field {names['prompt']!r} (the prompt) must be a non-empty string"
            )
        prompt, response = [{"role": "user", "content": prompt}], record[names["response"]]
    if not isinstance(response, str) or not response.strip():
        raise error(f"{source}: the response must be a non-empty string, not {response!r}")
    return {"messages": prompt, "response": response, "source": source}


def encode(rows: list[dict], tokenizer, max_len: int, system_prompt: str = ""):
    """Token ids of each demonstration: the prompt through the chat template (generation prompt
    added), the response followed by EOS. Rows over `max_len` tokens are dropped and counted in the
    log, never silently; if none is left that is an error. -> (prompts, responses, sources)."""
    import logging

    from flowrl_jax.tasks.files import DataError

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
        logging.getLogger("flowrl_jax").warning(
            "SFT: dropped %d of %d demonstrations over sft.max_len=%d tokens (longest %d; first: %s)",
            len(dropped),
            len(rows),
            max_len,
            longest,
            ", ".join(s for _, s in dropped[:3]),
        )
    if not prompts:
        raise DataError(f"SFT: every demonstration is longer than sft.max_len={max_len} tokens")
    return prompts, responses, sources
