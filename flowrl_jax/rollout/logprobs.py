"""Token log-probs (and entropy) of a sequence under a model, chunked over the sequence.

The full float32 logits [B, T, V] are never built: the decoder returns hidden states [B, T, D], and a
`lax.scan` over chunks of `chunk` positions turns one chunk at a time into logits, log-softmax and the
picked token's log-prob. The chunk body is rematerialised, so the backward pass also holds one chunk of
logits at a time. (At T = 8192, V = 152k a [1, T, V] float32 buffer is 5 GB: the peers' known
out-of-memory.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from flowrl_jax.models.decoder import Decoder
from flowrl_jax.models.model import forward


def _chunk_stats(cfg, params, hidden, targets, temperature, with_entropy):
    """hidden [B, C, D], targets [B, C] -> log p(target) [B, C] (and entropy [B, C])."""
    logits = Decoder(cfg).apply({"params": params}, hidden, method=Decoder.logits)  # [B, C, V]
    logp = jax.nn.log_softmax(logits / temperature, axis=-1)
    picked = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    if not with_entropy:
        return picked, None
    return picked, -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def token_logprobs(
    cfg,
    params,
    tokens,
    mask,
    temperature: float = 1.0,
    chunk: int = 256,
    with_entropy: bool = False,
    dropout=None,
):
    """tokens, mask [B, T] (prompt left-padded, then the response) -> logprobs [B, T] float32 with
    logprobs[:, t] = log p(tokens[:, t] | tokens[:, :t]) under logits / temperature, and 0 at t = 0.
    With with_entropy, also the entropy [B, T] of that same distribution (0 at t = 0).
    Positions whose mask is 0 hold meaningless values: mask them. dropout: LoRA dropout's key
    (training), or None."""
    hidden = forward(cfg, params, tokens, mask, return_logits=False, dropout=dropout).hidden
    return logprobs_from_hidden(cfg, params, hidden, tokens, temperature, chunk, with_entropy)


def logprobs_from_hidden(
    cfg, params, hidden, tokens, temperature=1.0, chunk=256, with_entropy=False
):
    """`token_logprobs` from the final hidden states [B, T, D] of a forward already run (the train
    step also feeds them to the log-Z and value heads)."""
    B, T = tokens.shape
    hidden = hidden[:, :-1]  # [B, T-1, D]
    targets = tokens[:, 1:]  # [B, T-1]
    # As few chunks of at most `chunk` positions as cover T - 1, of equal size: 319 positions in
    # chunks of <= 256 run as 2 x 160, not 2 x 256 with 193 padded rows of LM head and softmax.
    count = max(1, -(-(T - 1) // max(1, chunk)))
    chunk = max(1, -(-(T - 1) // count))
    pad = count * chunk - (T - 1)
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(targets, ((0, 0), (0, pad)))
    C = (T - 1 + pad) // chunk
    # [B, C*chunk, ...] -> [C, B, chunk, ...]: scan over the chunk axis.
    hidden = hidden.reshape(B, C, chunk, -1).swapaxes(0, 1)
    targets = targets.reshape(B, C, chunk).swapaxes(0, 1)

    @jax.checkpoint
    def body(_, xs):
        h, t = xs
        return None, _chunk_stats(cfg, params, h, t, temperature, with_entropy)

    _, (picked, entropy) = jax.lax.scan(body, None, (hidden, targets))

    def unchunk(x):  # [C, B, chunk] -> [B, T] with a leading zero column
        x = x.swapaxes(0, 1).reshape(B, C * chunk)[:, : T - 1]
        return jnp.pad(x, ((0, 0), (1, 0)))

    if with_entropy:
        return unchunk(picked), unchunk(entropy)
    return unchunk(picked)
