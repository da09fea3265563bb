"""The update step (forward, FlowRL loss, backward, clipped AdamW), ours against transformers + torch.

    python -m benchmarks.train_step [--pairs 5] [--sizes tiny,small]

Both sides train the identical model (a random `transformers` Qwen3-shaped checkpoint saved, then
loaded by `load_hf`) on the identical batch, fp32 on the CPU, torch with 2 threads and no
torch.compile. tiny: 64 sequences of 32 prompt + 128 response tokens; small: 32 of 64 + 256 (the
rollout benchmark's shapes, flowrl_jax.tiny.BENCH_HF_CONFIGS), groups of 8 samples per prompt.

The loss on both sides is FlowRL's (the project's default algorithm, `algorithms.flowrl`): token
log-probs of the sampled tokens through the LM head at every position (the whole [B, T, V] on the
torch side, chunks of `StepSpec.chunk` positions on ours), their entropy for logging, the log-Z head
on the prompt's mean hidden state, δ² weighted by the clipped importance weight. The log-Z head's
dropout is set to 0 so both sides compute the same function (it is a [D, D] MLP on B rows: no
measurable cost). Then the global-norm clip (1.0) and AdamW (decay 0.1) with optax's warm-up
schedule, reproduced with a torch LambdaLR. Ours is `trainer.step.update`, jitted with the state
donated, as the trainer runs it, with gradients accumulated over `--micro-batches` (default 4,
`train.micro_batches` in the trainer: the same update); the torch step takes the whole batch at
once, as a plain `transformers` step does.

Rows alternate ours / torch for `--pairs` pairs after one warm-up step each, with the fp32 matmul
peak (`benchmarks.matmul_peak`, the trainer's measurement) measured beside each pair. FLOPs: 6 · N · tokens with N the
non-embedding parameters plus the LM head (the embedding lookup does no matmul; the log-Z head and
norms are left out); attention's score and weighted-sum matmuls are not counted (they would add
4-8%). The last line reads `mfu_small=<x> speedup_vs_torch tiny=<y> small=<z>` (MFU: median of
our MFU over pairs; speedup: median of torch seconds / ours).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import matmul_peak, seconds
from flowrl_jax.models.families import config_from_hf
from flowrl_jax.trainer import metrics

WORK = {"tiny": (64, 32, 128), "small": (32, 64, 256)}  # sequences, prompt length, response length
GROUP = 8  # samples per prompt: rows with equal prompt ids form a group (FlowRL normalises in it)
ALGORITHM = "flowrl"
TORCH_THREADS = 2
# Our model's remat policy for the step: 'dots' keeps the matmul outputs and recomputes the
# elementwise work (norms, RoPE, SiLU, softmax) in the backward pass. On this CPU it is 1.17x (tiny)
# and 1.28x (small) faster than keeping everything ('none'), which stores and re-reads far more.
REMAT = "dots"
# Our update accumulates gradients over this many micro-batches (the trainer's train.micro_batches;
# the same update, tests/test_train_step.py). On this CPU 4 is the fastest: each step's temporary
# buffer is 4x smaller, so it faults in 4x fewer fresh pages (XLA:CPU allocates it per execution;
# at 1 micro-batch, ~750k minor faults a step) and the step does not slow down right after the
# torch step the way the whole-batch one does (small: 11.3 s after torch vs 8.4 s after ours).
# Measured in one run of 3 pairs each (2026-12-01): tiny 1.27 / 1.16 / 1.05 s, small 11.3 / 8.3 /
# 7.7 s at 1 / 2 / 4 micro-batches.
MICRO_BATCHES = 4


@dataclasses.dataclass
class Pair:
    ours_s: float
    torch_s: float
    peak: float  # fp32 FLOP/s measured beside the pair


@dataclasses.dataclass
class Result:
    name: str
    remat: str  # our model's remat policy
    micro_batches: int  # our gradient accumulation
    flops: float  # per step, 6 · N · tokens
    n_params: int  # N
    compile_s: float  # our first call (trace, compile, run)
    first_loss: tuple[float, float]  # (ours, torch) at the initial parameters
    first_grad_norm: tuple[float, float]  # (ours, torch), before clipping
    first_entropy: tuple[float, float]  # (ours, torch), mean over response tokens
    pairs: list[Pair]

    def speedup(self) -> float:
        return statistics.median(p.torch_s / p.ours_s for p in self.pairs)

    def mfu(self, which: str = "ours_s") -> float:
        return statistics.median(self.flops / getattr(p, which) / p.peak for p in self.pairs)


def step_params(hf: dict) -> int:
    """N: the parameters each token's matmuls touch, i.e. all but the embedding table (the layers'
    projections and norms, the final norm, the LM head)."""
    d, dh = hf["hidden_size"], hf["head_dim"]
    norms = hf["num_hidden_layers"] * (2 * d + 2 * dh) + d  # input/post norms, q/k norms; final
    return metrics.matmul_params(config_from_hf(hf)) + norms


def make_batch(seed: int, batch: int, prompt: int, response: int, vocab: int):
    """Random tokens [B, P + N] (no padding), rewards in {0, 1} for groups of GROUP rows."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, vocab, (batch, prompt + response)).astype(np.int32)
    rewards = rng.integers(0, 2, batch).astype(np.float32)
    group = (np.arange(batch) // min(GROUP, batch)).astype(np.int32)
    return tokens, rewards, group


def run_size(
    name: str,
    hf: dict,
    batch: int,
    prompt: int,
    response: int,
    pairs: int,
    remat: str = REMAT,
    seed: int = 0,
    micro_batches: int = MICRO_BATCHES,
) -> Result:
    import torch
    import transformers

    from flowrl_jax.models import load_hf

    torch.set_num_threads(TORCH_THREADS)
    hf = dict(hf)
    model_type = hf.pop("model_type")
    torch.manual_seed(seed)
    reference = transformers.AutoModelForCausalLM.from_config(
        transformers.AutoConfig.for_model(model_type, **hf), dtype=torch.float32
    ).train()
    with tempfile.TemporaryDirectory() as path:
        reference.save_pretrained(path)
        model = load_hf(path, remat=remat)

    tokens, rewards, group = make_batch(seed, batch, prompt, response, hf["vocab_size"])
    ours = our_update(model.cfg, model.params, tokens, rewards, group, prompt, micro_batches, seed)
    torch_step = _torch_step(reference, ours.state, ours.spec, ours.config, tokens, ours.prepared)
    run_ours = ours.run
    t0 = time.perf_counter()
    metrics = run_ours()
    compile_s = time.perf_counter() - t0
    first = torch_step()
    first_loss = (float(metrics["loss"]), first[0])
    first_grad_norm = (float(metrics["grad_norm"]), first[1])
    first_entropy = (float(metrics["entropy"]), first[2])
    run_ours(), torch_step()  # warm-up
    n_params = step_params(dict(hf, model_type=model_type))
    flops = 6 * n_params * batch * (prompt + response)
    rows = []
    for _ in range(pairs):
        peak = matmul_peak()
        rows.append(Pair(seconds(run_ours), seconds(torch_step), peak))
    return Result(
        name,
        remat,
        micro_batches,
        flops,
        n_params,
        compile_s,
        first_loss,
        first_grad_norm,
        first_entropy,
        rows,
    )


@dataclasses.dataclass
class OurUpdate:
    """The trainer's FlowRL update on one batch (`trainer.step.update`), jitted with the state
    donated (its buffers are reused for the new one), as the trainer runs it."""

    spec: object
    config: object
    state: object
    step: object
    tokens: np.ndarray
    mask: np.ndarray
    prepared: object

    def run(self) -> dict:
        self.state, metrics = self.step(self.state, self.tokens, self.mask, self.prepared)
        jax.block_until_ready((self.state, metrics))
        return metrics


def our_update(cfg, params, tokens, rewards, group, prompt, micro_batches, seed=0) -> OurUpdate:
    """FlowRL's update of the model (cfg, params) on `tokens` [B, P + N] (no padding), with the
    batch as the trainer hands it over: old and reference log-probs from the initial policy (old
    ones nudged so the importance weights are not all 1), scores from `prepare`. The log-Z
    head's dropout is 0 (a deterministic function, for comparisons)."""
    from flowrl_jax import algorithms
    from flowrl_jax.config import base_config
    from flowrl_jax.rollout.logprobs import token_logprobs
    from flowrl_jax.trainer import step as step_lib

    config = base_config()
    config.heads.logz.dropout = 0.0
    algo_cfg = config.algorithm[ALGORITHM]
    spec = step_lib.StepSpec(
        cfg, ALGORITHM, algo_cfg, config.heads, prompt, 1.0, micro_batches=micro_batches
    )
    optimizer = step_lib.make_optimizer(config.optimizer, config.heads)
    state = step_lib.init_state(spec, params, optimizer, jax.random.key(seed))
    mask = np.ones_like(tokens)
    logp0 = np.asarray(jax.jit(token_logprobs, static_argnums=0)(cfg, params, tokens, mask))
    logp0 = logp0[:, prompt:]
    noise = np.random.default_rng(seed + 1).normal(0.0, 0.01, logp0.shape).astype(np.float32)
    prepared = step_lib.prepare(
        spec,
        algorithms.Batch(
            logp=None,
            old_logp=logp0 + noise,
            mask=np.ones_like(logp0),
            rewards=rewards,
            group=group,
            ref_logp=logp0,
        ),
    )
    prepared = jax.tree.map(jnp.asarray, prepared)
    step = jax.jit(functools.partial(step_lib.update, spec, optimizer), donate_argnums=0)
    return OurUpdate(spec, config, state, step, tokens, mask, prepared)


def _torch_step(model, state, spec, config, tokens, batch):
    """The same update in torch: a function that runs one optimiser step and returns (loss, grad
    norm before clipping, entropy) at the parameters it started from."""
    import torch

    P, D = spec.prompt_len, spec.model.hidden_size
    zc, opt_cfg, algo_cfg = config.heads.logz, config.optimizer, spec.algo_cfg
    # The loss below is FlowRL's with its defaults.
    assert spec.alg.needs_logz and not spec.alg.needs_values
    assert algo_cfg.is_weight == "clip" and algo_cfg.length_normalize
    layers = []
    for _ in range(zc.depth):
        layers += [
            torch.nn.Linear(D, D),
            torch.nn.GELU(),
            torch.nn.LayerNorm(D, eps=1e-6),
            torch.nn.Dropout(zc.dropout),
        ]
    logz_head = torch.nn.Sequential(*layers, torch.nn.Linear(D, 1))
    ours = state.params["logz_head"]
    with torch.no_grad():  # our log-Z head's initial weights (flax kernels are [in, out])
        dense = [m for m in logz_head if isinstance(m, torch.nn.Linear)]
        norms = [m for m in logz_head if isinstance(m, torch.nn.LayerNorm)]
        for i, m in enumerate(dense):
            m.weight.copy_(torch.tensor(np.asarray(ours[f"Dense_{i}"]["kernel"]).T))
            m.bias.copy_(torch.tensor(np.asarray(ours[f"Dense_{i}"]["bias"])))
        for i, m in enumerate(norms):
            m.weight.copy_(torch.tensor(np.asarray(ours[f"LayerNorm_{i}"]["scale"])))
            m.bias.copy_(torch.tensor(np.asarray(ours[f"LayerNorm_{i}"]["bias"])))
    params = list(model.parameters()) + list(logz_head.parameters())
    optimizer = torch.optim.AdamW(
        params, lr=opt_cfg.learning_rate, weight_decay=opt_cfg.weight_decay
    )
    warmup = max(opt_cfg.warmup_steps, 1)  # optax.warmup_constant_schedule(0, lr, warmup)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(s / warmup, 1.0))
    ids = torch.tensor(tokens, dtype=torch.long)
    as_torch = lambda x: torch.tensor(np.asarray(x))
    old_logp, ref_logp, mask = (as_torch(x) for x in (batch.old_logp, batch.ref_logp, batch.mask))
    scores = as_torch(batch.scores)

    def step():
        optimizer.zero_grad(set_to_none=True)
        hidden = model.model(input_ids=ids).last_hidden_state  # [B, T, D], after the final norm
        logits = model.lm_head(hidden[:, :-1]).float() / spec.temperature  # [B, T-1, V]
        logp_all = torch.log_softmax(logits, dim=-1)
        logp = logp_all.gather(-1, ids[:, 1:, None])[..., 0][:, P - 1 :]  # [B, N]
        with torch.no_grad():  # logged only, as in our step
            entropy = -(logp_all[:, P - 1 :].exp() * logp_all[:, P - 1 :]).sum(-1)
            entropy = (entropy * mask).sum() / mask.sum()
        logz = logz_head(hidden[:, :P].mean(1))[:, 0]  # [B]
        n = mask.sum(-1).clamp(min=1.0)
        delta = (
            logz
            + (logp * mask).sum(-1) / n
            - algo_cfg.beta * scores
            - (ref_logp * mask).sum(-1) / n
        )
        log_w = ((logp.detach() - old_logp) * mask).sum(-1)
        eps = algo_cfg.is_clip_eps
        w = log_w.exp().clamp(1.0 - eps, 1.0 + eps)
        loss = (w * delta**2).mean()
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, opt_cfg.grad_clip)
        optimizer.step()
        schedule.step()
        return loss.item(), grad_norm.item(), entropy.item()

    return step


def report(result: Result, batch: int, prompt: int, response: int) -> None:
    r = result
    print(
        f"\n{r.name}: {batch} sequences x (prompt {prompt} + response {response}), fp32, "
        f"{ALGORITHM} loss, remat {r.remat}, {r.micro_batches} micro-batches; N = {r.n_params:,} (non-embedding + LM head), "
        f"{r.flops / 1e9:.0f} GFLOP per step (6·N·tokens); our first call {r.compile_s:.2f} s"
    )
    print(
        f"first step: loss ours {r.first_loss[0]:.6f} torch {r.first_loss[1]:.6f}; grad norm "
        f"ours {r.first_grad_norm[0]:.6f} torch {r.first_grad_norm[1]:.6f}; entropy ours "
        f"{r.first_entropy[0]:.6f} torch {r.first_entropy[1]:.6f}"
    )
    print(
        f"{'pair':>4} {'ours s':>8} {'torch s':>8} {'speedup':>8} {'peak GFLOP/s':>13} "
        f"{'our MFU':>8} {'torch MFU':>10}"
    )
    for i, p in enumerate(r.pairs):
        print(
            f"{i:>4} {p.ours_s:>8.3f} {p.torch_s:>8.3f} {p.torch_s / p.ours_s:>8.2f} "
            f"{p.peak / 1e9:>13.1f} {r.flops / p.ours_s / p.peak:>8.1%} "
            f"{r.flops / p.torch_s / p.peak:>10.1%}"
        )
    speedups = sorted(p.torch_s / p.ours_s for p in r.pairs)
    mfus = sorted(r.flops / p.ours_s / p.peak for p in r.pairs)
    med = lambda xs: statistics.median(xs)
    print(
        f"median: ours {med(p.ours_s for p in r.pairs):.3f} s, torch "
        f"{med(p.torch_s for p in r.pairs):.3f} s, speedup {r.speedup():.2f} "
        f"({speedups[0]:.2f}-{speedups[-1]:.2f}), peak {med(p.peak for p in r.pairs) / 1e9:.0f} "
        f"GFLOP/s, our MFU {r.mfu():.1%} ({mfus[0]:.1%}-{mfus[-1]:.1%}), torch MFU "
        f"{r.mfu('torch_s'):.1%}"
    )


def summary(results: dict[str, Result]) -> str:
    mfu = f"{results['small'].mfu():.3f}" if "small" in results else "n/a"
    speedups = " ".join(f"{k}={v.speedup():.2f}" for k, v in results.items())
    return f"mfu_small={mfu} speedup_vs_torch {speedups}"


def main() -> None:
    import torch
    import transformers

    from flowrl_jax.models import tiny

    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--sizes", default="tiny,small")
    parser.add_argument("--remat", default=REMAT, help="our model's remat policy (none|full|dots)")
    parser.add_argument(
        "--micro-batches", type=int, default=MICRO_BATCHES, help="our gradient accumulation"
    )
    args = parser.parse_args()
    sizes = args.sizes.split(",")
    for name in sizes:
        if name not in WORK:
            parser.error(f"--sizes: unknown size {name!r}; known: {', '.join(WORK)}")
    if args.pairs < 1:
        parser.error(f"--pairs={args.pairs} must be >= 1")
    torch.set_num_threads(TORCH_THREADS)
    print(
        f"jax {jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"transformers {transformers.__version__}, backend {jax.default_backend()}"
    )
    results = {}
    for name in sizes:
        batch, prompt, response = WORK[name]
        hf = tiny.BENCH_HF_CONFIGS[name]
        results[name] = run_size(
            name,
            hf,
            batch,
            prompt,
            response,
            args.pairs,
            args.remat,
            micro_batches=args.micro_batches,
        )
        report(results[name], batch, prompt, response)
    print(summary(results))


if __name__ == "__main__":
    main()
