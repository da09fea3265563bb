"""The heads trained beside the policy: FlowRL's log Z_φ(x) and PPO's value V(s_t).

Both read the policy's own final hidden states (after the final norm) and live in their own
parameter subtrees (`params['logz_head']`, `params['value_head']`): they are never part of the
sampling model or an HF export, and are saved in checkpoints with the rest of the train state.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from flowrl_jax import rules as R


def default_config() -> ConfigDict:
    return ConfigDict(
        {
            "logz": {
                "depth": 2,  # [Dense(D, D) → GELU → LayerNorm → Dropout] blocks before Dense(D, 1)
                "dropout": 0.1,  # during updates only (spec)
                # The pooled input keeps its gradient, so the Z loss trains the backbone too (the
                # authors report that detaching lowers accuracy).
                "detach_backbone": False,
                # The reference code's slice drops the last prompt token from the mean: a quirk,
                # kept as an option.
                "drop_last_prompt_token": False,
                "learning_rate": 0.0,  # 0: the policy's optimiser and rate; > 0: its own rate
            },
            "value": {"detach_backbone": False},
        }
    )


RULES = {
    "logz": {
        "depth": R.COUNT,
        "dropout": R.Range(0.0, 1.0, high_open=True),
        "learning_rate": R.NON_NEGATIVE,
    }
}


class LogZHead(nn.Module):
    """pooled [B, D] -> log Z [B]: [Dense(D, D) → GELU (exact) → LayerNorm → Dropout] × depth →
    Dense(D, 1), in float32."""

    depth: int = 2
    dropout: float = 0.1

    @nn.compact
    def __call__(self, pooled, deterministic: bool = True):
        x = pooled.astype(jnp.float32)
        width = x.shape[-1]
        for _ in range(self.depth):
            x = nn.Dense(width)(x)
            x = nn.gelu(x, approximate=False)
            x = nn.LayerNorm()(x)
            x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
        return nn.Dense(1)(x)[..., 0]


class ValueHead(nn.Module):
    """hidden [B, T, D] -> V [B, T] in float32."""

    @nn.compact
    def __call__(self, hidden):
        return nn.Dense(1, kernel_init=nn.initializers.normal(0.01))(hidden.astype(jnp.float32))[
            ..., 0
        ]


def pool_prompt(hidden, prompt_mask, drop_last: bool = False):
    """Mean of hidden [B, P, D] over each row's prompt tokens (prompt_mask [B, P], left padding);
    drop_last leaves out the last prompt token (the reference code's slice). -> [B, D] float32."""
    m = jnp.asarray(prompt_mask, jnp.float32)
    if drop_last:  # left padding: the last column is every row's last prompt token
        m = m.at[:, -1].set(0.0)
    total = jnp.einsum("bpd,bp->bd", hidden.astype(jnp.float32), m)
    return total / jnp.maximum(m.sum(-1, keepdims=True), 1.0)


def logz(head_params, prompt_hidden, prompt_mask, cfg: ConfigDict, keys=None):
    """log Z_φ(x) [B] from the prompt's hidden states [B, P, D] (prompt_mask [B, P]): pooled,
    detached from the backbone where cfg.detach_backbone, through the head. cfg: config.heads.logz.
    keys [B]: one dropout key per row (training: a row's mask then does not depend on the rows
    beside it); None: no dropout (evaluation)."""
    pooled = pool_prompt(prompt_hidden, prompt_mask, cfg.drop_last_prompt_token)
    return logz_pooled(head_params, pooled, cfg, keys)


def logz_pooled(head_params, pooled, cfg: ConfigDict, keys=None):
    """`logz` from prompts already pooled [B, D] (packed rows pool with a segment sum)."""
    if cfg.detach_backbone:
        pooled = jax.lax.stop_gradient(pooled)
    head = LogZHead(cfg.depth, cfg.dropout)
    variables = {"params": head_params}
    if keys is None:
        return head.apply(variables, pooled, deterministic=True)

    def one_row(x, key):  # x [D] -> log Z (scalar)
        return head.apply(variables, x[None], deterministic=False, rngs={"dropout": key})[0]

    return jax.vmap(one_row)(pooled, keys)


def init(rng, hidden_size: int, cfg: ConfigDict, logz: bool, value: bool) -> dict:
    """The heads' parameter subtrees the algorithm needs ({} when none)."""
    params = {}
    k1, k2 = jax.random.split(rng)
    if logz:
        head = LogZHead(cfg.logz.depth, cfg.logz.dropout)
        params["logz_head"] = head.init(k1, jnp.zeros((1, hidden_size)))["params"]
    if value:
        params["value_head"] = ValueHead().init(k2, jnp.zeros((1, 1, hidden_size)))["params"]
    return params
