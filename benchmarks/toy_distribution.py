"""Exact distribution matching on an enumerable space: the FlowRL paper's Figure 1, measured.

    python -m benchmarks.toy_distribution [--steps 3000] [--out benchmarks/results/toy_distribution.png]

Space: every sequence of L = 3 tokens over 6 (216 answers). Policy and reference are tabular and
autoregressive (one logit row per prefix, 43 rows), so any distribution over the 216 is reachable.
The reward is multi-modal: 25 answers score 1, 40 score 0.5, the rest 0. Both algorithms train
through the project's registered losses (`algorithms.get`), on-policy, with Adam, on the same
samples budget: `batch` answers drawn from the current policy per step, one update each (Adam,
learning rate 0.05 decayed to 0 over the run by a cosine).

FlowRL runs with raw rewards (`reward_normalization='none'`) and length normalisation, so its fixed
point is exact: δ(y) = log Z + (1/L) log π(y) − β r(y) − (1/L) log π_ref(y) vanishes for every y at
    π*(y) = π_ref(y) · exp(L·β·r(y)) / Z'          (every answer has length L)
(without length normalisation it would be π_ref·exp(β·r)/Z). Here the single prompt's log Z is a
scalar parameter trained with the policy. GRPO (group-normalised advantages over the batch) is
measured against the same π*. "Kept": an optimal answer holding at least half its mass under π*.
Last line: `flowrl_tv=<x> grpo_tv=<y> grpo_optimal_kept=<k>/<n>`.
"""

from __future__ import annotations

import argparse
import itertools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flowrl_jax import algorithms

L, V = 3, 6
BETA = 1.0  # β: with raw rewards in [0, 1] and L = 3, π* favours optimal answers by e^3 ≈ 20 : 1
ANSWERS = np.array(list(itertools.product(range(V), repeat=L)), np.int32)  # [216, L]
PREFIXES = 1 + V + V * V  # rows of the tabular policy: prefixes of length 0, 1, 2


def prefix_rows(y):
    """y [..., L] -> the table row of each step's prefix, [..., L]."""
    return jnp.stack(
        [jnp.zeros_like(y[..., 0]), 1 + y[..., 0], 1 + V + V * y[..., 0] + y[..., 1]], -1
    )


def token_logp(table, y):
    """table [PREFIXES, V] logits, y [..., L] -> log π(y_t | y_<t) [..., L]."""
    logp = jax.nn.log_softmax(table, -1)[prefix_rows(y)]  # [..., L, V]
    return jnp.take_along_axis(logp, y[..., None], -1)[..., 0]


def probs(table):
    """The exact distribution over ANSWERS, [216]."""
    return np.exp(np.asarray(token_logp(table, jnp.asarray(ANSWERS)).sum(-1), np.float64))


def problem(seed: int = 0):
    """(reference logits, rewards [216]): 25 optimal answers, 40 worse ones, the rest 0."""
    rng = np.random.default_rng(seed)
    ref = rng.normal(0.0, 1.0, (PREFIXES, V)).astype(np.float32)
    rewards = np.zeros(len(ANSWERS), np.float32)
    order = rng.permutation(len(ANSWERS))
    rewards[order[:25]] = 1.0
    rewards[order[25:65]] = 0.5
    return jnp.asarray(ref), rewards


def target(ref, rewards, beta: float = BETA, length_normalize: bool = True) -> np.ndarray:
    """π* = π_ref · exp(L·β·r) / Z', the fixed point of length-normalised FlowRL on raw rewards
    (π_ref · exp(β·r) / Z without length normalisation)."""
    scale = L * beta if length_normalize else beta
    w = probs(ref) * np.exp(scale * rewards.astype(np.float64))
    return w / w.sum()


def train(
    name: str,
    steps: int,
    batch: int = 64,
    lr: float = 0.05,
    seed: int = 0,
    length_normalize: bool = True,
):
    """Train a tabular policy (initialised at the reference) with the registered loss `name`.
    Returns (final table, TV to π* after each step)."""
    algorithm = algorithms.get(name)
    cfg = algorithms.default_config()[name]
    if name == "flowrl":
        cfg.reward_normalization = "none"  # raw rewards: the exact target above
        cfg.beta = BETA
        cfg.length_normalize = length_normalize
    ref, rewards = problem(seed)
    reward_of = jnp.asarray(rewards).reshape((V,) * L)
    goal = jnp.asarray(target(ref, rewards, BETA, length_normalize), jnp.float32)
    all_y = jnp.asarray(ANSWERS)
    params = {"table": ref, "logz": jnp.zeros(())}
    # Adam's step size does not shrink with the gradient, so at a constant rate the table keeps
    # jittering around the fixed point (TV ~0.02); a cosine decay lets it settle.
    optimizer = optax.adam(optax.cosine_decay_schedule(lr, steps))
    mask = jnp.ones((batch, L), jnp.float32)
    group = jnp.zeros((batch,), jnp.int32)  # one prompt: the whole batch is one group

    def sample(table, key):
        y = jnp.zeros((batch, L), jnp.int32)
        for t, k in enumerate(jax.random.split(key, L)):
            logits = table[prefix_rows(y)[:, t]]  # [batch, V]
            y = y.at[:, t].set(jax.random.categorical(k, logits))
        return y

    def loss_fn(params, y, old_logp, ref_logp, r):
        b = algorithms.Batch(
            logp=token_logp(params["table"], y),
            old_logp=old_logp,
            mask=mask,
            rewards=r,
            group=group,
            ref_logp=ref_logp,
            logz=jnp.broadcast_to(params["logz"], (batch,)),
        )
        return algorithm.loss(algorithm.prepare(b, cfg), cfg)

    def step(carry, key):
        params, opt_state = carry
        y = sample(params["table"], key)
        old = jax.lax.stop_gradient(token_logp(params["table"], y))
        r = reward_of[y[:, 0], y[:, 1], y[:, 2]]
        grads, _ = jax.grad(loss_fn, has_aux=True)(params, y, old, token_logp(ref, y), r)
        updates, opt_state = optimizer.update(grads, opt_state)
        params = optax.apply_updates(params, updates)
        p = jnp.exp(token_logp(params["table"], all_y).sum(-1))
        return (params, opt_state), 0.5 * jnp.abs(p - goal).sum()

    keys = jax.random.split(jax.random.key(seed + 1), steps)
    run = jax.jit(lambda p, o, k: jax.lax.scan(step, (p, o), k))
    (params, _), tv = run(params, optimizer.init(params), keys)
    return params["table"], np.asarray(tv)


def summary(table, seed: int = 0, length_normalize: bool = True) -> dict:
    ref, rewards = problem(seed)
    goal, p = target(ref, rewards, BETA, length_normalize), probs(table)
    optimal = rewards == 1.0
    return {
        "tv": 0.5 * np.abs(p - goal).sum(),
        "entropy": float(-(p * np.log(np.maximum(p, 1e-30))).sum()),
        "kept": int((p[optimal] >= 0.5 * goal[optimal]).sum()),
        "optimal": int(optimal.sum()),
        "min_optimal_ratio": float((p[optimal] / goal[optimal]).min()),
        "mass_on_optimal": float(p[optimal].sum()),
    }


def plot(path: str, tables: dict, curves: dict, seed: int = 0) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref, rewards = problem(seed)
    goal = target(ref, rewards)
    order = np.lexsort((-goal, -rewards))  # by reward, then by target mass
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4), gridspec_kw={"width_ratios": [3, 1]})
    ax1.plot(goal[order], "k-", lw=2, label="π* = π_ref·exp(Lβr)/Z")
    for name, table in tables.items():
        ax1.plot(probs(table)[order], ".", ms=4, label=name)
    ax1.axvline(25 - 0.5, color="gray", lw=0.5)
    ax1.axvline(65 - 0.5, color="gray", lw=0.5)
    ax1.set(xlabel="answer (r = 1 | r = 0.5 | r = 0), by target mass", ylabel="probability")
    ax1.set_yscale("log")
    ax1.set_ylim(1e-6, 1)
    ax1.legend()
    for name, tv in curves.items():
        ax2.plot(np.arange(1, len(tv) + 1), tv, label=name)
    ax2.set(xlabel="Adam step", ylabel="TV to π*", yscale="log")
    ax2.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--out", default="benchmarks/results/toy_distribution.png")
    args = parser.parse_args()
    tables, curves, rows = {}, {}, {}
    for name in ("flowrl", "grpo"):
        t0 = time.perf_counter()
        tables[name], curves[name] = train(name, args.steps, args.batch)
        rows[name] = summary(tables[name]) | {"seconds": time.perf_counter() - t0}
    ref, rewards = problem()
    goal = target(ref, rewards)
    print(
        f"{len(ANSWERS)} answers (L={L}, V={V}), 25 optimal, beta={BETA}, {args.steps} steps x "
        f"{args.batch} samples, Adam; pi* puts {goal[rewards == 1].sum():.3f} on the optimal "
        f"answers, entropy {-(goal * np.log(goal)).sum():.3f}"
    )
    print(
        f"{'algorithm':>9} {'TV to pi*':>10} {'entropy':>8} {'optimal kept':>13} "
        f"{'min p/pi* (optimal)':>20} {'mass on optimal':>16} {'seconds':>8}"
    )
    for name, r in rows.items():
        print(
            f"{name:>9} {r['tv']:>10.3g} {r['entropy']:>8.3f} {r['kept']:>10}/{r['optimal']:<2} "
            f"{r['min_optimal_ratio']:>20.3f} {r['mass_on_optimal']:>16.3f} {r['seconds']:>8.1f}"
        )
    plot(args.out, tables, curves)
    print(f"plot: {args.out}")
    f, g = rows["flowrl"], rows["grpo"]
    print(
        f"flowrl_tv={f['tv']:.3g} grpo_tv={g['tv']:.3g} grpo_optimal_kept={g['kept']}/{g['optimal']}"
    )


if __name__ == "__main__":
    main()
