"""One Flax (linen) decoder for Qwen2 / Qwen2.5, Qwen3 and Llama 3.

Layers are stacked under `nn.scan`, so the compiled program holds one layer body whatever the depth,
and every layer parameter carries a leading layer axis `[L, ...]`. The same `__call__` serves a full
forward (no cache) and cached prefill/decode: attention is always computed over "slots" (positions in
the key/value buffer), a query in slot s sees key slots <= s whose `kv_mask` is set.

Parameter tree (kernels are [in, out], the transpose of torch's Linear weights):
    embed/embedding                 [V, D]
    layers/input_norm/scale         [L, D]
    layers/attn/{q,k,v}_proj/kernel [L, D, H*Dh | K*Dh]   (+ bias [L, ...] if qkv_bias)
    layers/attn/{q,k}_norm/scale    [L, Dh]                (qk_norm, Qwen3)
    layers/attn/o_proj/kernel       [L, H*Dh, D]           (+ bias if o_bias)
    layers/post_attn_norm/scale     [L, D]
    layers/mlp/{gate,up}_proj/kernel [L, D, F]; layers/mlp/down_proj/kernel [L, F, D]
    final_norm/scale                [D]
    lm_head/kernel                  [D, V]                 (absent when tie_word_embeddings)
"""

from __future__ import annotations

import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from flowrl_jax import mesh as mesh_lib
from flowrl_jax.mesh import BATCH_AXES
from flowrl_jax.models import attention, kernels
from flowrl_jax.models.attention import dtype_of, from_bits, to_bits
from flowrl_jax.models.families import DecoderConfig

_INIT = nn.initializers.normal(stddev=0.02)


class DecoderOutput(NamedTuple):
    logits: jax.Array | None  # [B, T, V] float32, or None when return_logits=False
    hidden: jax.Array  # [B, T, D] final hidden states, after the final norm
    cache: dict | None  # {'k': [L, B, K, Dh, S], 'v': [L, B, K, S, Dh]}, updated; None without one


class Segments(NamedTuple):
    """One layer's KV cache held as consecutive segments of slots (the sampler's decode layout).
    Only the last segment is written (at slot `index` within it); attention reads every segment.
    A decode phase that has filled S slots of P + N thus reads ~S of them, not all P + N."""

    k: tuple  # per segment [B, K, Dh, S_i]
    v: tuple  # per segment [B, K, S_i, Dh]
    index: jax.Array  # int32: the write slot within the last segment


class RowCache(NamedTuple):
    """One layer's KV buffer in which every row writes at a slot of its own (the slot sampler:
    each row is a different request at a different point of its response). The kv_mask says which
    slots a row sees; a decode step reads each row's up to its last visible one (`_row_decode`)."""

    k: jax.Array  # [B, K, Dh, S], in the compute dtype or as its bits (`to_bits`)
    v: jax.Array  # [B, K, S, Dh]
    index: jax.Array  # [B] int32: each row's write slot


class Linear(nn.Module):
    """y = x @ kernel (+ bias), kernel [in, out]; accumulates in fp32, returns `out_dtype`."""

    features: int
    use_bias: bool
    dtype: jnp.dtype
    param_dtype: jnp.dtype
    out_dtype: jnp.dtype | None = None
    lora_scale: float = 0.0  # s of the LoRA adapters, applied where the tree has them (lora.py)
    lora_dropout: float = 0.0  # on the adapters' input, where the forward has a "dropout" key

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", _INIT, (x.shape[-1], self.features), self.param_dtype)
        # As one 2-D matmul over the flattened rows [..., D] -> [M, D]: the kernel's gradient is
        # then x2ᵀ @ dy with a single contracting dim. XLA's CPU backend runs the 3-D form
        # ("btd,btf->df", two contracting dims) about 2x slower in the backward pass.
        y = jnp.dot(
            x.reshape(-1, x.shape[-1]).astype(self.dtype),
            kernel.astype(self.dtype),
            preferred_element_type=jnp.float32,
        )
        if self.has_variable("params", "lora_a"):  # y += s · (x A) B (models/lora.py)
            y = y + self._adapted(x.reshape(-1, x.shape[-1]).astype(self.dtype))
        y = y.reshape(*x.shape[:-1], self.features)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        return y.astype(self.out_dtype or self.dtype)

    def _adapted(self, x2):
        if not self.lora_scale:
            raise ValueError(
                f"{self.name} has LoRA adapters but DecoderConfig.lora_scale is 0 (set it to "
                "lora.alpha / lora.rank: models/lora.py)"
            )
        a, b = (self.get_variable("params", n).astype(self.dtype) for n in ("lora_a", "lora_b"))
        p = self.lora_dropout
        if p and self.has_rng("dropout"):  # the update's forward; PEFT drops x before A
            keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - p, x2.shape)
            x2 = jnp.where(keep, x2 / (1.0 - p), 0).astype(x2.dtype)
        xa = jnp.dot(x2, a, preferred_element_type=jnp.float32).astype(self.dtype)
        return self.lora_scale * jnp.dot(xa, b, preferred_element_type=jnp.float32)


def _proj(cfg: DecoderConfig, features: int, bias: bool, name: str) -> Linear:
    """A layer's projection (q/k/v/o, gate/up/down): the Linear LoRA adapters may sit on."""
    dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    return Linear(
        features, bias, dt, pdt, name=name, lora_scale=cfg.lora_scale, lora_dropout=cfg.lora_dropout
    )


class RMSNorm(nn.Module):
    """Normalises in fp32 and scales in the compute dtype, as the HF reference does."""

    eps: float
    dtype: jnp.dtype
    param_dtype: jnp.dtype

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return scale.astype(self.dtype) * y.astype(self.dtype)


def rope_inv_freq(cfg: DecoderConfig) -> jax.Array:
    """Inverse frequencies [Dh/2] with the checkpoint's scaling (plain, linear, or Llama 3.1's)."""
    dim = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
    rope = cfg.rope
    kind = rope.get("rope_type", "default")
    if kind == "linear":
        inv = inv / rope["factor"]
    elif kind == "llama3":
        # Llama 3.1: long wavelengths are stretched by `factor`, short ones kept, and the band between
        # interpolated smoothly.
        factor, lo, hi = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
        old_len = rope["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        scaled = jnp.where(wavelen > old_len / lo, inv / factor, inv)
        smooth = (old_len / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_len / hi) & (wavelen <= old_len / lo)
        inv = jnp.where(medium, smoothed, scaled)
    return inv


def rope_cos_sin(positions: jax.Array, cfg: DecoderConfig, dtype) -> tuple[jax.Array, jax.Array]:
    """positions [B, T] int -> cos, sin [B, T, Dh] (HF's half-split layout, not interleaved)."""
    freqs = positions.astype(jnp.float32)[..., None] * rope_inv_freq(cfg)  # [B, T, Dh/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)  # [B, T, Dh]
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def apply_rope(x, cos, sin):
    """x [B, T, N, Dh]; cos, sin [B, T, Dh]."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]


class Attention(nn.Module):
    cfg: DecoderConfig

    @nn.compact
    def __call__(self, x, mask, cos, sin, cache, layer, cache_index):
        """x [B, T, D]; mask [B, T, S] bool; cache None, or the whole stack's (k [L, B, K, Dh, S],
        v [L, B, K, S, Dh]), of which this is layer `layer` (the scanned forward), or this layer's
        own `Segments` (the sampler's unrolled decode) or `RowCache` (the slot sampler's)."""
        cfg = self.cfg
        dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        B, T, _ = x.shape
        H, K, Dh = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        q = _proj(cfg, H * Dh, cfg.qkv_bias, "q_proj")(x).reshape(B, T, H, Dh)
        k = _proj(cfg, K * Dh, cfg.qkv_bias, "k_proj")(x).reshape(B, T, K, Dh)
        v = _proj(cfg, K * Dh, cfg.qkv_bias, "v_proj")(x).reshape(B, T, K, Dh)
        if cfg.qk_norm:
            q = RMSNorm(cfg.rms_norm_eps, dt, pdt, name="q_norm")(q)
            k = RMSNorm(cfg.rms_norm_eps, dt, pdt, name="k_norm")(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if isinstance(mask, kernels.SequenceIds):  # a forward without a cache, by a kernel
            kind = kernels.resolve(cfg.attention, cfg.dtype)
            out = kernels.attend(kind, q, k, v, mask.ids).reshape(B, T, H * Dh)
            return _proj(cfg, cfg.hidden_size, cfg.o_bias, "o_proj")(out), cache
        # Keys as [B, K, Dh, S] and values as [B, K, S, Dh] in the cache: both decode dots are then
        # plain row-major batched matmuls over (b, k), q[R, Dh] @ k[Dh, S] and p[R, S] @ v[S, Dh]. On
        # XLA's CPU backend a key buffer stored [S, Dh] (contracting its minor dim) runs 4-10x slower
        # per decode step; without a cache the keys are fresh and stay [B, K, T, Dh].
        v = v.swapaxes(1, 2)  # [B, K, T, Dh]
        # The slot sampler's cache under a decode kernel keeps keys [.., S, Dh], its layout.
        major = isinstance(cache, RowCache) and kernels.keys_major(cfg)
        k_minor = cache is not None and not major
        k = k.transpose(0, 2, 3, 1) if k_minor else k.swapaxes(1, 2)  # [B, K, Dh|T, T|Dh]
        if cache is None:
            ks, vs = (k,), (v,)
        elif isinstance(cache, Segments):
            last = _write_kv(cache.k[-1], cache.v[-1], k, v, cache.index)
            cache = Segments(cache.k[:-1] + last[:1], cache.v[:-1] + last[1:], cache.index)
            ks, vs = cache.k, cache.v
        elif isinstance(cache, RowCache):
            written = _write_rows(cache.k, cache.v, k, v, cache.index, major)
            cache = RowCache(*written, cache.index)
            ks, vs = (cache.k,), (cache.v,)
        else:
            # Write this chunk into slots [cache_index, cache_index + T) of this layer and attend over
            # the layer's buffer. The stack is a loop carry updated in place: scanning it as per-layer
            # inputs/outputs instead makes XLA copy the whole cache every decode step.
            cache = _write_kv(*cache, k, v, cache_index, layer)
            ks, vs = ((jax.lax.dynamic_index_in_dim(buf, layer, keepdims=False),) for buf in cache)
        ks = tuple(from_bits(x, dt).astype(dt) for x in ks)
        vs = tuple(from_bits(x, dt).astype(dt) for x in vs)
        # GQA without copying kv: query head h = k·R + r belongs to kv head k (HF's repeat_kv order).
        # Queries go to [B, K, T*R, Dh] so both dots are canonical batched matmuls over (b, k):
        # XLA's CPU backend runs other dimension orders several times slower.
        R = H // K
        q = q.reshape(B, T, K, R, Dh).transpose(0, 2, 1, 3, 4)  # [B, K, T, R, Dh]
        block = cfg.attention_block
        if major:
            kind = kernels.resolve_decode(cfg.decode_attention)
            read = lambda kv, q, mask: kernels.decode(
                kind, q, *(from_bits(x, dt) for x in kv), mask
            )
            # check_vma off: a Pallas kernel's output shapes do not say how they vary.
            kv = (cache.k, cache.v)
            out = on_own_rows(read, kv, q.reshape(B, K, R, Dh), mask[:, 0], check_vma=False)
        elif isinstance(cache, RowCache) and T == 1 and cfg.decode_block:
            out = _row_decode(q.reshape(B, K, R, Dh), cache, mask[:, 0], dt, cfg.decode_block)
        elif block and T > block:
            out = attention.blocked(q, ks, vs, mask, block, dt, k_minor)
        elif cache is None and cfg.causal_block and T > cfg.causal_block:
            # Equal blocks, as few as keep each within causal_block: T = 320 at 128 goes as 3 x 107
            # (skips 1/3 of the scores), not 128 + 128 + 64.
            count = -(-T // cfg.causal_block)
            out = attention.causal(q, k, v, mask, -(-T // count), dt)
        else:
            out = attention.attend(q.reshape(B, K, T * R, Dh), ks, vs, mask, dt, k_minor)
        out = out.reshape(B, K, T, R, Dh).transpose(0, 2, 1, 3, 4).reshape(B, T, H * Dh)
        return _proj(cfg, cfg.hidden_size, cfg.o_bias, "o_proj")(out), cache


def _row_decode(q, cache: RowCache, mask, dt, keys: int):
    """The slot sampler's decode attention: q [B, K, R, Dh], mask [B, S] -> [B, K, R, Dh]. On the
    CPU each device's rows read their cache up to their fill only (`attention.ragged_decode`);
    elsewhere the whole window in one dot each (a loop of small gathers and dots is what a GPU
    runs worst; the accelerators' ragged kernels are issue #34's)."""

    def ragged(q, k, v, mask):
        read = lambda kv, q, mask: attention.ragged_decode(q, *kv, mask, dt, keys)
        return on_own_rows(read, (k, v), q, mask)

    def dense(q, k, v, mask):
        k, v = (from_bits(x, dt).astype(dt) for x in (k, v))
        return attention.attend(q, (k,), (v,), mask[:, None], dt, True)

    return jax.lax.platform_dependent(q, cache.k, cache.v, mask, cpu=ragged, default=dense)


def _write_kv(k_buf, v_buf, k, v, slot, layer=None):
    """Write k [B, K, Dh, T], v [B, K, T, Dh] into slots [slot, slot + T) of the buffers (k_buf
    [..., Dh, S], v_buf [..., S, Dh]; with `layer`, stacked [L, ...] buffers at that layer)."""
    lead = () if layer is None else (layer,)
    k, v = k.astype(k_buf.dtype), v.astype(v_buf.dtype)
    if lead:
        k, v = k[None], v[None]
    return (
        jax.lax.dynamic_update_slice(k_buf, k, (*lead, 0, 0, 0, slot)),
        jax.lax.dynamic_update_slice(v_buf, v, (*lead, 0, 0, slot, 0)),
    )


def _write_rows(k_buf, v_buf, k, v, slots, keys_major=False):
    """`_write_kv` with a write slot per row: slots [B] int32 (a scatter, in place in a loop).
    Buffers may hold bits (`to_bits`): the new keys and values are written as bits then. With
    `keys_major`, keys are laid out as values are, [B, K, S, Dh]."""
    k, v = to_bits(k.astype(dtype_of(k_buf, k))), to_bits(v.astype(dtype_of(v_buf, v)))
    if k_buf.dtype != k.dtype:  # float buffers of a wider type than 16 bits
        k, v = k.astype(k_buf.dtype), v.astype(v_buf.dtype)
    put_v = jax.vmap(lambda buf, x, s: jax.lax.dynamic_update_slice(buf, x, (0, s, 0)))
    put_k = (
        put_v
        if keys_major
        else jax.vmap(lambda buf, x, s: jax.lax.dynamic_update_slice(buf, x, (0, 0, s)))
    )
    return on_own_rows(put_k, k_buf, k, slots), on_own_rows(put_v, v_buf, v, slots)


def on_own_rows(write, buf, x, index, check_vma=True):
    """write(buf, x, index) -> buf, run by each device on its own rows and KV heads
    (`mesh.on_own_rows`): buf, x [B, K, ...] (buf may be a tuple of buffers alike), index [B, ...]."""
    heads = jax.tree.leaves(buf)[0].shape[1]
    return mesh_lib.on_own_rows(write, (buf, x, index), (1, 1, None), heads, check_vma)


class MLP(nn.Module):
    cfg: DecoderConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        gate = _proj(cfg, cfg.intermediate_size, False, "gate_proj")(x)
        up = _proj(cfg, cfg.intermediate_size, False, "up_proj")(x)
        return _proj(cfg, cfg.hidden_size, False, "down_proj")(nn.silu(gate) * up)


def constrain_batch(x: jax.Array) -> jax.Array:
    """Pin x's leading (batch) dim to the data-parallel mesh axes when a context mesh is set
    (`jax.set_mesh`), so that propagation cannot choose to split activations over the model width
    instead. A no-op without a mesh, or when the batch does not divide."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not set(BATCH_AXES) <= set(mesh.axis_names):
        return x
    if x.shape[0] % math.prod(mesh.shape[a] for a in BATCH_AXES):
        return x
    return jax.lax.with_sharding_constraint(x, P(BATCH_AXES))


class DecoderLayer(nn.Module):
    cfg: DecoderConfig

    @nn.compact
    def __call__(self, carry, layer, mask, cos, sin, cache_index):
        """The scan body: carry (x [B, T, D], cache stack or None), layer index in."""
        cfg = self.cfg
        x, cache = carry
        x = constrain_batch(x)
        dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        h, cache = Attention(cfg, name="attn")(
            RMSNorm(cfg.rms_norm_eps, dt, pdt, name="input_norm")(x),
            mask,
            cos,
            sin,
            cache,
            layer,
            cache_index,
        )
        x = x + h
        x = x + MLP(cfg, name="mlp")(RMSNorm(cfg.rms_norm_eps, dt, pdt, name="post_attn_norm")(x))
        return (x, cache), None


_REMAT_POLICIES = {
    "full": None,  # save nothing, recompute the whole layer in the backward pass
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def _layer_stack(cfg: DecoderConfig):
    layer = DecoderLayer
    if cfg.remat != "none":
        layer = nn.remat(layer, prevent_cse=False, policy=_REMAT_POLICIES[cfg.remat])
    return nn.scan(
        layer,
        variable_axes={"params": 0},
        split_rngs={"params": True, "dropout": True},  # a layer's own dropout masks
        in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
        length=cfg.num_layers,
    )


class Decoder(nn.Module):
    cfg: DecoderConfig

    def setup(self):
        cfg = self.cfg
        dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        self.embed = nn.Embed(
            cfg.vocab_size, cfg.hidden_size, embedding_init=_INIT, dtype=dt, param_dtype=pdt
        )
        self.layers = _layer_stack(cfg)(cfg)
        self.final_norm = RMSNorm(cfg.rms_norm_eps, dt, pdt)
        if not cfg.tie_word_embeddings:
            self.lm_head = Linear(cfg.vocab_size, False, dt, pdt, out_dtype=jnp.float32)

    def __call__(
        self,
        tokens,
        positions,
        kv_mask,
        cache=None,
        cache_index=0,
        return_logits=True,
        segments=None,
    ):
        """tokens, positions [B, T] int32; kv_mask [B, S] bool, S = T without a cache, else the
        buffer length; cache: init_cache's layout; cache_index: first slot of this chunk.
        segments [B, T] int (packed rows, no cache): a token attends only to earlier tokens of
        its own segment."""
        cached = cache is not None
        x, mask, cos, sin = self.inputs(tokens, positions, kv_mask, cache_index, segments, cached)
        layer_cache = None if cache is None else (cache["k"], cache["v"])
        layers = jnp.arange(self.cfg.num_layers)
        (x, layer_cache), _ = self.layers((x, layer_cache), layers, mask, cos, sin, cache_index)
        new_cache = None if cache is None else {"k": layer_cache[0], "v": layer_cache[1]}
        return self.outputs(x, new_cache, return_logits)

    def inputs(self, tokens, positions, kv_mask, cache_index, segments=None, cached=True):
        """Embeddings [B, T, D], the attention mask [B, T, S] and RoPE tables for the layers.
        Without a cache, where `model.attention` resolves to a kernel, the mask is the tokens'
        `kernels.SequenceIds` instead: no [B, T, T] array is built."""
        T, S = tokens.shape[1], kv_mask.shape[1]
        x = self.embed(tokens)  # [B, T, D]
        cos, sin = rope_cos_sin(positions, self.cfg, x.dtype)
        if not cached and kernels.resolve(self.cfg.attention, self.cfg.dtype) != "xla":
            return x, kernels.SequenceIds(kernels.sequence_ids(kv_mask, segments)), cos, sin
        q_slot = cache_index + jnp.arange(T)  # [T]
        causal = jnp.arange(S)[None, :] <= q_slot[:, None]  # [T, S]
        mask = causal[None] & kv_mask[:, None, :].astype(bool)  # [B, T, S]
        if segments is not None:
            mask &= segments[:, :, None] == segments[:, None, :]
        return x, mask, cos, sin

    def outputs(self, x, cache, return_logits=True) -> DecoderOutput:
        hidden = self.final_norm(x)
        logits = self.logits(hidden) if return_logits else None
        return DecoderOutput(logits, hidden, cache)

    def logits(self, hidden):
        """hidden [..., D] -> float32 logits [..., V]; a method so chunked log-prob code can call it."""
        if self.cfg.tie_word_embeddings:
            table = self.embed.embedding.astype(self.cfg.dtype)  # [V, D]
            return jnp.einsum("...d,vd->...v", hidden, table, preferred_element_type=jnp.float32)
        return self.lm_head(hidden)


def split_layers(params) -> list:
    """The stacked layer parameters as one tree per layer (static slices). Inside a decode loop they
    are loop-invariant, so XLA slices them once per rollout instead of once per step and layer."""
    layers = params["layers"]
    count = jax.tree.leaves(layers)[0].shape[0]
    return [jax.tree.map(lambda x, i=i: x[i], layers) for i in range(count)]


def decode_unrolled(
    cfg: DecoderConfig, params, layer_params, caches, tokens, positions, kv_mask, cache_index
) -> DecoderOutput:
    """The cached forward with the layers unrolled: the decode loop's body.

    layer_params: split_layers(params); caches: per layer, its Segments. In a decode loop the scanned form copies each layer's weights and cache out of the
    stacks every step (no views in XLA); here every layer reads its own buffers and updates its
    cache in place. Compile time grows with depth, which is why the full forward stays scanned.
    """
    decoder = Decoder(cfg)
    x, mask, cos, sin = decoder.apply(
        {"params": params}, tokens, positions, kv_mask, cache_index, method=Decoder.inputs
    )
    new = []
    for lp, cache in zip(layer_params, caches):
        (x, cache), _ = DecoderLayer(cfg).apply(
            {"params": lp}, (x, cache), None, mask, cos, sin, cache_index
        )
        new.append(cache)
    return decoder.apply({"params": params}, x, new, method=Decoder.outputs)


def init_cache(cfg: DecoderConfig, batch: int, length: int, dtype=None) -> dict:
    """Zeroed KV buffers in the compute dtype: keys 'k' [L, B, K, Dh, S] (transposed, see Attention),
    values 'v' [L, B, K, S, Dh]."""
    L, K, Dh, dt = cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, jnp.dtype(dtype or cfg.dtype)
    return {
        "k": jnp.zeros((L, batch, K, Dh, length), dt),
        "v": jnp.zeros((L, batch, K, length, Dh), dt),
    }


def positions_from_mask(mask: jax.Array) -> jax.Array:
    """mask [B, T] (1 = real token, left padding) -> positions [B, T]; pads get 0 (never attended)."""
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


def init_params(cfg: DecoderConfig, rng: jax.Array) -> dict:
    tokens = jnp.zeros((1, 1), jnp.int32)
    return Decoder(cfg).init(rng, tokens, tokens, jnp.ones((1, 1), bool))["params"]


def param_shapes(cfg: DecoderConfig) -> dict:
    """The parameter tree as ShapeDtypeStructs; allocates nothing."""
    return jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
