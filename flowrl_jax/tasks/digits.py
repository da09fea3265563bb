"""The synthetic task of the embedded default job: any prompt, and the reward is the fraction of the
response's non-space characters that are digits. A random tiny model learns it in a few steps, which
makes the end-to-end job check something without a download."""

from __future__ import annotations

import numpy as np

from flowrl_jax.tasks.base import Task


def digit_fraction(response: str, row: int) -> float:
    del row
    chars = [c for c in response if not c.isspace()]
    return sum(c.isdigit() for c in chars) / len(chars) if chars else 0.0


def make_jit_reward(tokenizer):
    """The same fraction over token ids, for the compiled step: each token's digits and non-space
    characters counted once from its own decoding (special tokens: none). Equal to
    `digit_fraction` of the decoded text except where a multi-byte character is split across
    tokens."""
    import jax.numpy as jnp

    texts = [tokenizer.decode([i], skip_special_tokens=True) for i in range(len(tokenizer))]
    digits = jnp.asarray(np.array([sum(c.isdigit() for c in t) for t in texts], np.float32))
    chars = jnp.asarray(np.array([sum(not c.isspace() for c in t) for t in texts], np.float32))

    def reward(out, rows):
        del rows
        mask = out.mask.astype(jnp.float32)
        d = jnp.sum(digits[out.tokens] * mask, axis=1)
        c = jnp.sum(chars[out.tokens] * mask, axis=1)
        return jnp.where(c > 0, d / jnp.maximum(c, 1.0), 0.0)

    return reward


def task() -> Task:
    questions = [f"What is {a} + {b}?" for a in range(10) for b in range(10)]
    return Task("digits", questions, digit_fraction, make_jit_reward=make_jit_reward)
