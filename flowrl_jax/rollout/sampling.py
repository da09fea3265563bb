"""What every sampling program shares: the sampling parameters, the output record, the token draw
(temperature, top-k, top-p) and the weights in the layout and dtype decode reads them in."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from flowrl_jax.mesh import AXES
from flowrl_jax.models import partition
from flowrl_jax.models.decoder import (
    Decoder,
    from_bits,
    init_cache,
    positions_from_mask,
    to_bits,
)
from flowrl_jax.models.families import DecoderConfig

STOP_EOS = 0  # the row emitted one of its stop tokens (kept as the last response token)
STOP_LENGTH = 1  # the row reached max_new_tokens


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """Static per program: changing one compiles a new program (logged)."""

    max_new_tokens: int
    n: int = 1  # samples per prompt (the GRPO / FlowRL group size G)
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0  # nucleus mass, in (0, 1]; 1 = off
    top_k: int = 0  # 0 = off
    stop_tokens: tuple[int, ...] = ()  # EOS and any other stop ids
    pad_id: int = 0  # written after a row stops (masked out)

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"sampling n={self.n}: the number of samples per prompt must be >= 1")
        if self.max_new_tokens < 1:
            raise ValueError(f"sampling max_new_tokens={self.max_new_tokens} must be >= 1")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"sampling top_p={self.top_p} must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError(f"sampling top_k={self.top_k} must be >= 0 (0 = off)")
        if self.temperature < 0:
            raise ValueError(f"sampling temperature={self.temperature} must be >= 0 (0 = greedy)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class SampleOutput(NamedTuple):
    prompt_tokens: jax.Array  # [R, P] left-padded, R = B * n
    prompt_mask: jax.Array  # [R, P]
    tokens: jax.Array  # [R, N] response, right-padded with pad_id after the stop
    mask: jax.Array  # [R, N] 1 on response tokens (the stop token included)
    logprobs: jax.Array  # [R, N] float32 log p(token) under logits / temperature; 0 where mask = 0
    stop_reason: jax.Array  # [R] STOP_EOS or STOP_LENGTH

    def sequences(self):
        """(tokens, mask) [R, P + N]: each prompt joined to its response, the layout every
        teacher-forced pass reads. numpy in, numpy out (the phased loop); traced in, traced out."""
        xp = np if isinstance(self.tokens, np.ndarray) else jnp
        return (
            xp.concatenate([self.prompt_tokens, self.tokens], axis=1),
            xp.concatenate([self.prompt_mask, self.mask], axis=1),
        )


def filter_logits(logits: jax.Array, top_k: int, top_p: float) -> jax.Array:
    """Set logits outside the top-k / nucleus set to -inf. logits [R, V] float32."""
    if top_k == 0 and top_p >= 1.0:
        return logits
    V = logits.shape[-1]
    k = V if top_k == 0 else min(top_k, V)
    values, index = jax.lax.top_k(logits, k)  # [R, k], sorted descending
    keep = jnp.ones(values.shape, bool)
    if top_p < 1.0:
        probs = jax.nn.softmax(values, axis=-1)
        # Keep a token while the mass before it is < top_p: the smallest prefix reaching top_p.
        keep = (jnp.cumsum(probs, axis=-1) - probs) < top_p
    kept = jnp.where(keep, values, -jnp.inf)
    rows = jnp.arange(logits.shape[0])[:, None]
    return jnp.full_like(logits, -jnp.inf).at[rows, index].set(kept)


def sample_token(logits, keys, sp: SamplingParams):
    """logits [R, V] float32, keys [R] -> (tokens [R], log p [R] under logits / temperature)."""
    if sp.greedy:
        token = jnp.argmax(logits, axis=-1)
        scaled = logits
    else:
        scaled = logits / sp.temperature
        filtered = filter_logits(scaled, sp.top_k, sp.top_p)
        token = jax.vmap(jax.random.categorical)(keys, filtered)
    logp = jax.nn.log_softmax(scaled, axis=-1)
    return token.astype(jnp.int32), jnp.take_along_axis(logp, token[:, None], -1)[:, 0]


def decode_weights(cfg: DecoderConfig, params):
    """The policy as sampling reads it, computed once per sampling program: every floating
    weight cast to the compute dtype (a bf16 copy of fp32 master weights), and under a context
    mesh laid out by `partition.decode_rules` (split over "tensor", whole over the data-parallel
    axes). Without it, the decode loop reads the master weights and the partitioner gathers them
    again for every loop."""
    dt = jnp.dtype(cfg.dtype)
    params = jax.tree.map(
        lambda x: x.astype(dt) if jnp.issubdtype(x.dtype, jnp.floating) else x, params
    )
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not set(AXES) <= set(mesh.axis_names):
        return params
    # Cast where the weights lie (the training layout), then gather the compute-dtype copy as
    # bits: XLA's CPU backend would gather bf16 in float32 (twice the memory, and the plans of
    # tests/test_memory_plans.py are the CPU compiler's); on a TPU or GPU the view is free.
    train = partition.match(partition.rules_for(cfg.family), params, mesh)
    bits = jax.tree.map(to_bits, jax.lax.with_sharding_constraint(params, train))
    bits = jax.lax.optimization_barrier(bits)
    decode = partition.match(partition.decode_rules(cfg.family), params, mesh)
    bits = jax.lax.with_sharding_constraint(bits, decode)
    return jax.tree.map(lambda b, p: from_bits(b, p.dtype), bits, params)


def prefill(cfg: DecoderConfig, params, tokens, mask):
    """The prompts through the decoder into a fresh KV cache of their own length. tokens, mask
    [B, P] left-padded -> (DecoderOutput with the cache and no logits, float32 logits [B, V] of
    each prompt's last position, the only ones sampling needs: never [B, P, V])."""
    decoder = Decoder(cfg)
    B, P = tokens.shape
    positions = positions_from_mask(mask)
    out = decoder.apply(
        {"params": params},
        tokens,
        positions,
        mask.astype(bool),
        init_cache(cfg, B, P),
        0,
        return_logits=False,
    )
    # Left padding: the last column is every prompt's last token.
    last = decoder.apply({"params": params}, out.hidden[:, -1], method=Decoder.logits)
    return out, last
