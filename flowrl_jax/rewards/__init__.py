"""Rewards the host computes for responses: math answers and code in a sandbox."""

from flowrl_jax.rewards.code import code_reward, code_rewards, extract_code

__all__ = ["code_reward", "code_rewards", "extract_code"]
