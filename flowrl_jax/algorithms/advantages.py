"""Shared pieces of the losses: group statistics, masked reductions, KL estimators, GAE.

All in float32. B sequences, T response slots; `mask` [B, T] is 1 on response tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")


def group_stats(rewards, group):
    """rewards [B], group [B] int ids -> per-row (mean, unbiased std, group size) of its group."""
    B = rewards.shape[0]
    ids = jnp.unique(group, size=B, fill_value=-1, return_inverse=True)[1].reshape(B)  # dense ids
    count = jax.ops.segment_sum(jnp.ones_like(rewards), ids, B)[ids]
    mean = jax.ops.segment_sum(rewards, ids, B)[ids] / count
    sq = jax.ops.segment_sum((rewards - mean) ** 2, ids, B)[ids]
    std = jnp.sqrt(sq / jnp.maximum(count - 1, 1))  # Bessel's correction
    return mean, std, count


def group_normalize(rewards, group, eps: float = 1e-6, scale: bool = True):
    """r̂ = (r - mean_G r) / (std_G r + eps), std unbiased. A group of one has mean 0, std 1 (its
    reward passes through); an all-equal group gets r̂ = 0 and is still trained on. scale=False
    only centres (Dr. GRPO's choice)."""
    mean, std, count = group_stats(rewards, group)
    single = count == 1
    mean = jnp.where(single, 0.0, mean)
    std = jnp.where(single, 1.0, std)
    return (rewards - mean) / (std + eps) if scale else rewards - mean


def seq_sum(x, mask):
    return jnp.sum(x * mask, axis=-1)


def lengths(mask):
    return jnp.sum(mask, axis=-1)


def aggregate_terms(per_token, mask, mode: str):
    """A per-token loss [B, T] -> (total, count), the loss being total / count:
    token-mean:          Σ_{i,t} over Σ_{i,t} mask (DAPO: long answers weigh by their tokens)
    seq-mean-token-mean: each sequence's token mean, over the sequences (GRPO as published)
    seq-mean-token-sum:  each sequence's token sum, over the sequences
    Sequences without a response token (padding rows) are left out of every count."""
    n = lengths(mask)
    if mode == "token-mean":
        return seq_sum(per_token, mask).sum(), n.sum()
    valid = (n > 0).astype(per_token.dtype)
    if mode == "seq-mean-token-mean":
        per_seq = seq_sum(per_token, mask) / jnp.maximum(n, 1.0)
    elif mode == "seq-mean-token-sum":
        per_seq = seq_sum(per_token, mask)
    else:
        raise ValueError(f"loss aggregation {mode!r}; known: {', '.join(AGGREGATIONS)}")
    return jnp.sum(per_seq * valid), valid.sum()


def aggregate(per_token, mask, mode: str):
    """`aggregate_terms` as one scalar (0 for a batch without a response token)."""
    total, count = aggregate_terms(per_token, mask, mode)
    return total / jnp.maximum(count, 1.0)


def masked_mean(x, mask):
    return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def masked_std(x, mask):
    """Unbiased over the masked entries."""
    mean = masked_mean(x, mask)
    n = jnp.sum(mask)
    return jnp.sqrt(jnp.sum(((x - mean) ** 2) * mask) / jnp.maximum(n - 1, 1.0))


def whiten(x, mask, eps: float = 1e-8):
    """(x - mean) / (std + eps) over the masked entries of the whole batch; 0 off the mask."""
    return (x - masked_mean(x, mask)) / (masked_std(x, mask) + eps) * mask


def k3(logp, ref_logp):
    """Schulman's k3 estimator of KL(pi || ref) per token: e^(ref - logp) - (ref - logp) - 1 >= 0."""
    d = ref_logp - logp
    return jnp.exp(d) - d - 1.0


def last_token(mask):
    """[B, T] one-hot of each sequence's last response token (all zero for an empty row)."""
    T = mask.shape[-1]
    n = lengths(mask).astype(jnp.int32)
    return (jnp.arange(T)[None, :] == (n - 1)[:, None]).astype(mask.dtype) * (n > 0)[:, None]


def discounted_returns(token_rewards, mask, gamma: float):
    """G_t = Σ_{s >= t} γ^(s-t) r_s over each row's response tokens. [B, T] -> [B, T]."""

    def step(carry, x):
        r, m = x
        carry = (r + gamma * carry) * m
        return carry, carry

    xs = (token_rewards.T[::-1], mask.T[::-1])
    _, out = jax.lax.scan(step, jnp.zeros(token_rewards.shape[0], token_rewards.dtype), xs)
    return out[::-1].T


def gae(token_rewards, values, mask, gamma: float, lam: float):
    """Generalised advantage estimation over right-padded responses. token_rewards, values, mask
    [B, T] -> (advantages, returns) [B, T], with V = 0 after the last token:
    δ_t = r_t + γ V_{t+1} - V_t,  A_t = δ_t + γ λ A_{t+1},  returns = A + V."""
    next_values = jnp.concatenate([values[:, 1:] * mask[:, 1:], jnp.zeros_like(values[:, :1])], 1)
    deltas = (token_rewards + gamma * next_values - values) * mask

    def step(carry, x):
        d, m = x
        carry = (d + gamma * lam * carry) * m
        return carry, carry

    _, adv = jax.lax.scan(
        step, jnp.zeros(mask.shape[0], values.dtype), (deltas.T[::-1], mask.T[::-1])
    )
    adv = adv[::-1].T
    return adv, (adv + values) * mask


def clipped_surrogate(logp, old_logp, advantages, eps_low: float, eps_high: float):
    """PPO's per-token loss -min(ρA, clip(ρ, 1-ε_low, 1+ε_high)A), ρ = e^(logp - old_logp).
    Returns (loss [B, T], ratio [B, T], clipped [B, T] bool: the clip decided the gradient)."""
    ratio = jnp.exp(logp - old_logp)
    unclipped = ratio * advantages
    clipped = jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high) * advantages
    return -jnp.minimum(unclipped, clipped), ratio, clipped < unclipped


def policy_metrics(batch, ratio, was_clipped, prefix: str = "") -> dict:
    """The diagnostics every algorithm logs (ratio and clip fraction over response tokens, k3 KL to
    the reference when there is one, entropy when given, reward stats)."""
    m = batch.mask
    out = {
        "reward/mean": jnp.mean(batch.rewards),
        "reward/std": jnp.std(batch.rewards),
        "response/length_mean": jnp.mean(lengths(m)),
    }
    if ratio is not None:
        out |= {
            f"{prefix}ratio/mean": masked_mean(ratio, m),
            f"{prefix}ratio/max": jnp.max(jnp.where(m > 0, ratio, -jnp.inf)),
            f"{prefix}ratio/min": jnp.min(jnp.where(m > 0, ratio, jnp.inf)),
            f"{prefix}clip_fraction": masked_mean(was_clipped.astype(jnp.float32), m),
        }
    if batch.ref_logp is not None:
        out["kl_ref/k3"] = masked_mean(k3(batch.logp, batch.ref_logp), m)
    if batch.entropy is not None:
        out["entropy"] = masked_mean(batch.entropy, m)
    if batch.advantages is not None:
        a = batch.advantages
        am = m if a.ndim == 2 else (lengths(m) > 0).astype(a.dtype)
        out |= {"advantage/mean": masked_mean(a, am), "advantage/std": masked_std(a, am)}
    return {k: jax.lax.stop_gradient(v) for k, v in out.items()}
