"""Rewards the host computes for responses: math answers and code in a sandbox."""

from flowrl_jax.rewards.code import code_reward, code_rewards, extract_code
from flowrl_jax.rewards.math_answers import (
    MathVerifier,
    answer_reward,
    final_answer,
    math_verify_reward,
    normalize_answer,
)

__all__ = [
    "MathVerifier",
    "answer_reward",
    "code_reward",
    "code_rewards",
    "extract_code",
    "final_answer",
    "math_verify_reward",
    "normalize_answer",
]
