"""`Model`: a DecoderConfig, its parameters and (optionally) the mesh they live on.

The pure functions below are what the trainer jits into its own steps; `Model`'s methods are the
convenience form for scripts and tests (`model(input_ids, attention_mask) -> logits`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from flowrl_jax import mesh as mesh_lib
from flowrl_jax.models.decoder import (
    Decoder,
    DecoderOutput,
    init_cache,
    init_params,
    positions_from_mask,
)
from flowrl_jax.models.families import DecoderConfig


def _rngs(dropout) -> dict:
    """A forward's random keys: LoRA dropout's (DecoderConfig.lora_dropout) where given."""
    return {} if dropout is None else {"dropout": dropout}


def forward(
    cfg: DecoderConfig, params, tokens, mask, return_logits: bool = True, dropout=None
) -> DecoderOutput:
    """Full forward without cache. tokens, mask [B, T] (left padding); positions follow the mask.
    dropout: a key for LoRA dropout (training), or None."""
    return Decoder(cfg).apply(
        {"params": params},
        tokens,
        positions_from_mask(mask),
        mask.astype(bool),
        return_logits=return_logits,
        rngs=_rngs(dropout),
    )


def forward_packed(
    cfg: DecoderConfig, params, tokens, positions, segments, dropout=None
) -> DecoderOutput:
    """Forward over packed rows without logits: tokens, positions, segments [B, T], several
    sequences per row, each its own segment id (0 = padding); attention stays within a segment
    and each sequence's positions start at 0, so a sequence's hidden states equal its own forward's."""
    return Decoder(cfg).apply(
        {"params": params},
        tokens,
        positions,
        segments > 0,
        return_logits=False,
        segments=segments,
        rngs=_rngs(dropout),
    )


def greedy_generate(cfg: DecoderConfig, params, tokens, mask, steps: int):
    """Greedy decoding with the KV cache: prefill the left-padded prompt, then `steps` single-token
    steps. tokens, mask [B, P] -> new tokens [B, steps]. (The sampler in rollout/ is the full form.)"""
    B, P = tokens.shape
    decoder = Decoder(cfg)
    cache = init_cache(cfg, B, P + steps)
    kv_mask = jnp.concatenate([mask.astype(bool), jnp.zeros((B, steps), bool)], axis=1)  # [B, S]
    positions = positions_from_mask(mask)
    out = decoder.apply({"params": params}, tokens, positions, kv_mask, cache, 0)
    first = jnp.argmax(out.logits[:, -1], axis=-1)  # left padding: the last column is real

    def step(carry, t):
        cache, kv_mask, token, pos = carry
        slot = P + t
        kv_mask = jax.lax.dynamic_update_slice(kv_mask, jnp.ones((B, 1), bool), (0, slot))
        out = decoder.apply({"params": params}, token[:, None], pos[:, None], kv_mask, cache, slot)
        return (out.cache, kv_mask, jnp.argmax(out.logits[:, 0], -1), pos + 1), token

    carry = (out.cache, kv_mask, first, positions[:, -1] + 1)
    _, new = jax.lax.scan(step, carry, jnp.arange(steps))
    return new.T  # [B, steps]


_forward_jit = jax.jit(forward, static_argnums=(0, 4))
_greedy_jit = jax.jit(greedy_generate, static_argnums=(0, 4))


@dataclasses.dataclass
class Model:
    cfg: DecoderConfig
    params: dict
    mesh: Mesh | None = None
    hf_config: dict | None = None  # the checkpoint's own config.json, kept for export

    @classmethod
    def random(cls, cfg: DecoderConfig, seed: int = 0) -> Model:
        return cls(cfg, jax.jit(init_params, static_argnums=0)(cfg, jax.random.key(seed)))

    def _inputs(self, input_ids, attention_mask):
        tokens = jnp.asarray(input_ids, jnp.int32)
        mask = jnp.ones_like(tokens) if attention_mask is None else jnp.asarray(attention_mask)
        if self.mesh is not None and tokens.shape[0] % mesh_lib.batch_size_divisor(self.mesh) == 0:
            sharding = mesh_lib.batch_sharding(self.mesh)
            tokens, mask = jax.device_put(tokens, sharding), jax.device_put(mask, sharding)
        return tokens, mask.astype(jnp.int32)

    def _context(self):
        """Run under the model's mesh, so the decoder's activation constraints apply."""
        return contextlib.nullcontext() if self.mesh is None else jax.set_mesh(self.mesh)

    def forward(self, input_ids, attention_mask=None, return_logits: bool = True) -> DecoderOutput:
        with self._context():
            return _forward_jit(
                self.cfg, self.params, *self._inputs(input_ids, attention_mask), return_logits
            )

    def __call__(self, input_ids, attention_mask=None) -> jax.Array:
        """input_ids, attention_mask [B, T] (left-padded) -> float32 logits [B, T, V]."""
        return self.forward(input_ids, attention_mask).logits

    def generate_greedy(self, input_ids, attention_mask=None, steps: int = 32) -> np.ndarray:
        with self._context():
            return np.asarray(
                _greedy_jit(self.cfg, self.params, *self._inputs(input_ids, attention_mask), steps)
            )

    @functools.cached_property
    def num_params(self) -> int:
        return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(self.params))
