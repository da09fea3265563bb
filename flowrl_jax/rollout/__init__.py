"""Rollout: the sampler and chunked log-prob recomputation."""

from flowrl_jax.rollout.logprobs import token_logprobs
from flowrl_jax.rollout.sampler import (
    STOP_EOS,
    STOP_LENGTH,
    SampleOutput,
    Sampler,
    SamplingParams,
    filter_logits,
    generate,
)

__all__ = [
    "STOP_EOS",
    "STOP_LENGTH",
    "SampleOutput",
    "Sampler",
    "SamplingParams",
    "filter_logits",
    "generate",
    "token_logprobs",
]
