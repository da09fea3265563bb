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
