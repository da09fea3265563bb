"""Rollout sampling speed: our sampler against `transformers` generate, identical model and weights.

    python -m benchmarks.sampler [--pairs 5] [--sizes tiny,small]

Temperature 1, top-k and top-p off, EOS suppressed (every row runs max_new_tokens), fp32 on the CPU.
tiny: 64 sequences, prompt 32, 128 new tokens; small: 32 sequences, prompt 64, 256 new tokens
(shapes from flowrl_jax.tiny.BENCH_HF_CONFIGS). Rows alternate ours / transformers after one
warm-up call each, with the fp32 matmul peak measured beside each pair for MFU (FLOPs: prefill, the
weights per new token and attention over each token's prefix); our compile time is reported apart.
Beside each pair it also times a floor: the decode steps' weight matmuls alone, in XLA, which bounds
the ratio any XLA sampler could reach on this machine.
The last line reads `ratio_vs_transformers tiny=<x> small=<y>` (median of our tokens/s over theirs).

    python -m benchmarks.sampler --long_tail [--pairs 5]

The slot sampler (refilling, then shrinking: rollout.shrink's default) against our own static
batch, same model and requests, interleaved: a table of response lengths drawn once
(`length_table`: log-normal, median a quarter of the limit, a few at the limit), each request
stopped at its length on both sides (`limits`), no stop token. The rollout batch is several
times the slots (`LONG_TAIL`: 4x on tiny, 2x on small); the static batch samples all of it as
one batch, as `rollout.slots=0` does.
Useful (unpadded) tokens per second; the last line reads `refill_vs_static tiny=<x> small=<y>`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import jax
import numpy as np

from benchmarks import matmul_peak, seconds
from flowrl_jax.models.families import config_from_hf
from flowrl_jax.trainer import metrics

WORK = {"tiny": (64, 32, 128), "small": (32, 64, 256)}  # sequences, prompt length, new tokens


def run_size(name: str, pairs: int) -> float:
    import torch
    import transformers

    from flowrl_jax.models import load_hf, tiny
    from flowrl_jax.rollout import Sampler, SamplingParams

    batch, prompt_len, new = WORK[name]
    hf = dict(tiny.BENCH_HF_CONFIGS[name])
    model_type = hf.pop("model_type")
    torch.manual_seed(0)
    reference = transformers.AutoModelForCausalLM.from_config(
        transformers.AutoConfig.for_model(model_type, **hf), dtype=torch.float32
    ).eval()
    with tempfile.TemporaryDirectory() as path:
        reference.save_pretrained(path)
        ours = load_hf(path)
    prompts = np.random.default_rng(0).integers(3, hf["vocab_size"], (batch, prompt_len))
    sampler = Sampler(ours.cfg, prompt_buckets=(prompt_len,))
    sp = SamplingParams(max_new_tokens=new, n=1, temperature=1.0)
    prompt_lists = prompts.tolist()
    ids = torch.tensor(prompts)

    def run_ours(seed):
        out = sampler(ours.params, prompt_lists, jax.random.key(seed), sp)
        assert out.mask.sum() == batch * new

    def run_theirs():
        with torch.no_grad():
            out = reference.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                max_new_tokens=new,
                min_new_tokens=new,
                eos_token_id=None,
                pad_token_id=0,
            )
        assert out.shape == (batch, prompt_len + new)

    floors = [weight_matmuls(ours.params, batch, new, options) for options in FLOOR_OPTIONS]
    t0 = time.perf_counter()
    run_ours(0)
    first = time.perf_counter() - t0
    run_theirs()
    for floor in floors:
        floor()
    tokens = batch * new
    flops = generate_flops(tiny.BENCH_HF_CONFIGS[name], batch, prompt_len, new)
    rows = []
    for i in range(pairs):
        t0 = time.perf_counter()
        run_ours(i + 1)
        t1 = time.perf_counter()
        peak = matmul_peak()
        floor_seconds = min(seconds(floor) for floor in floors)
        t2 = time.perf_counter()
        run_theirs()
        t3 = time.perf_counter()
        rows.append((tokens / (t1 - t0), tokens / (t3 - t2), peak, tokens / floor_seconds))
    print(
        f"\n{name}: {batch} sequences x (prompt {prompt_len} + {new} new), fp32; our first "
        f"call {first:.2f} s of which compile {sampler.compile_seconds:.2f} s"
    )
    print(
        f"{'pair':>4} {'ours tok/s':>11} {'transformers tok/s':>19} {'ratio':>6} "
        f"{'peak GFLOP/s':>13} {'our MFU':>8} {'their MFU':>10} {'floor tok/s':>12} "
        f"{'floor ratio':>12}"
    )
    mfu = lambda rate, peak: flops * rate / tokens / peak
    for i, (a, b, peak, floor) in enumerate(rows):
        print(
            f"{i:>4} {a:>11,.0f} {b:>19,.0f} {a / b:>6.2f} {peak / 1e9:>13.1f} "
            f"{mfu(a, peak):>8.1%} {mfu(b, peak):>10.1%} {floor:>12,.0f} {floor / b:>12.2f}"
        )
    ratios = sorted(a / b for a, b, _, _ in rows)
    floor_ratios = sorted(f / b for _, b, _, f in rows)
    med = [statistics.median(c) for c in zip(*rows)]
    print(
        f"median: ours {med[0]:,.0f} tok/s, transformers {med[1]:,.0f} tok/s, ratio "
        f"{statistics.median(ratios):.2f} (min {ratios[0]:.2f}, max {ratios[-1]:.2f}); "
        f"{flops / 1e9:.1f} GFLOP per call; at 3x transformers we would run at "
        f"{mfu(3 * med[1], med[2]):.0%} of the matmul peak"
    )
    print(
        f"floor: the decode steps' weight matmuls alone run at {statistics.median(floor_ratios):.2f}x "
        f"transformers (min {floor_ratios[0]:.2f}, max {floor_ratios[-1]:.2f}): an XLA sampler "
        f"on this machine cannot exceed that ratio"
    )
    return statistics.median(ratios)


# The floor is timed under both CPU dot paths, and the faster counts: XLA's default (ynn library
# fusions) and its own Eigen dots, which run these small-batch matmuls faster here.
FLOOR_OPTIONS = ({}, {"xla_cpu_experimental_ynn_fusion_type": ""})


def weight_matmuls(params, batch: int, steps: int, options: dict):
    """A compiled program that runs only the matmuls of `steps` decode steps of `batch` rows with
    the model's own weights (q, k, v, o, gate, up, down per layer, then the LM head), chained
    through a cheap normalisation so none can be skipped. No attention, sampling or cache: its
    time is a lower bound on any XLA sampler's decode time here. Returns a call that blocks."""
    from flowrl_jax.models.decoder import split_layers

    layers = split_layers(params)
    if "lm_head" in params:
        head = params["lm_head"]["kernel"]
    else:
        head = params["embed"]["embedding"].T
    x0 = jax.numpy.ones((batch, head.shape[0]), jax.numpy.float32)

    def step(_, x):
        for lp in layers:
            attn, mlp = lp["attn"], lp["mlp"]
            kernel = lambda tree, name: tree[name]["kernel"]
            k, v = x @ kernel(attn, "k_proj"), x @ kernel(attn, "v_proj")
            o = (x @ kernel(attn, "q_proj")) @ kernel(attn, "o_proj")
            x = x + 1e-3 * (o + k.mean(-1, keepdims=True) + v.mean(-1, keepdims=True))
            gated = jax.nn.silu(x @ kernel(mlp, "gate_proj")) * (x @ kernel(mlp, "up_proj"))
            x = x + 1e-3 * (gated @ kernel(mlp, "down_proj"))
            x = x * jax.lax.rsqrt(jax.numpy.mean(x * x, -1, keepdims=True))
        return x + 1e-6 * (x @ head)[:, :1]

    program = jax.jit(
        lambda layers, head, x: jax.lax.fori_loop(0, steps, step, x), compiler_options=options
    )
    program = program.lower(layers, head, x0).compile()
    return lambda: program(layers, head, x0).block_until_ready()


def generate_flops(hf: dict, batch: int, prompt: int, new: int) -> float:
    """Prefill of the prompt plus `new` single-token steps, each attending over its prefix (the
    trainer's counts, flowrl_jax/trainer/metrics.py)."""
    cfg = config_from_hf(hf)
    prefill = metrics.forward_flops(cfg, batch * prompt)
    prefill += metrics.attention_flops(cfg, batch * prompt * prompt)
    steps = new * metrics.forward_flops(cfg, batch)
    steps += metrics.attention_flops(cfg, batch * sum(prompt + t for t in range(new)))
    return prefill + steps


# The long tail: prompts, samples each, prompt length, response limit, slots, rows a refill
# prefills. A rollout batch several times the slots, as a recipe's is many times its slots (7B:
# 4,096 requests, 136 slots; small at 4x, 256 requests, measured no better: BENCHMARKS.md), and
# slots enough that a decode step's matmuls are not starved of rows on this CPU: small's weight
# matmuls cost 1.7x as much a row at 32 rows as at 64 (fp32).
LONG_TAIL = {"tiny": (64, 8, 32, 512, 128, 8), "small": (16, 8, 64, 512, 64, 8)}


def length_table(requests: int, limit: int, seed: int = 0) -> np.ndarray:
    """Target response lengths, drawn once: log-normal with its median at a quarter of the limit
    (sigma 0.8: about 4% reach the limit), clipped to [1, limit]."""
    rng = np.random.default_rng(seed)
    drawn = np.exp(rng.normal(np.log(limit / 4), 0.8, requests))
    return np.clip(np.round(drawn), 1, limit).astype(np.int32)


def long_tail(name: str, pairs: int) -> float:
    """Our static batch against the slot sampler (refilling) on one length table, every request
    stopped at its table length (no stop token), interleaved. -> median ratio of useful tokens/s."""
    from flowrl_jax.models import Model, config_from_hf
    from flowrl_jax.rollout import Sampler, SamplingParams
    from flowrl_jax.rollout.slots import SlotSettings

    prompts_n, n, prompt_len, limit, slots, prefill_rows = LONG_TAIL[name]
    from flowrl_jax.models import tiny

    cfg = config_from_hf(dict(tiny.BENCH_HF_CONFIGS[name]))
    params = Model.random(cfg, 0).params
    prompts = np.random.default_rng(0).integers(3, cfg.vocab_size, (prompts_n, prompt_len)).tolist()
    lengths = length_table(prompts_n * n, limit)
    sp = SamplingParams(max_new_tokens=limit, n=n, temperature=1.0)
    static = Sampler(cfg, prompt_buckets=(prompt_len,))
    settings = SlotSettings(slots=slots, prefill_rows=prefill_rows)
    slotted = Sampler(cfg, prompt_buckets=(prompt_len,), slots=settings)
    useful = int(lengths.sum())

    def timed(sampler, seed):
        t0 = time.perf_counter()
        out = sampler(params, prompts, jax.random.key(seed), sp, limits=lengths)
        assert (out.mask.sum(1) == lengths).all()  # every request stopped at its table length
        return useful / (time.perf_counter() - t0)

    timed(static, 0), timed(slotted, 0)  # compile and warm up
    rows = [(timed(static, i + 1), timed(slotted, i + 1), matmul_peak()) for i in range(pairs)]
    print(
        f"\n{name}: {prompts_n} prompts x {n} samples, prompt {prompt_len}, limit {limit}, fp32; "
        f"lengths median {np.median(lengths):.0f}, mean {lengths.mean():.1f}, "
        f"p90 {np.percentile(lengths, 90):.0f}, max {lengths.max()}, "
        f"{(lengths == limit).sum()} at the limit; {useful} useful tokens; slots {slots}, "
        f"{prefill_rows} prefilled together"
    )
    print(f"{'pair':>4} {'static tok/s':>13} {'slots tok/s':>12} {'ratio':>6} {'peak GFLOP/s':>13}")
    for i, (a, b, peak) in enumerate(rows):
        print(f"{i:>4} {a:>13,.0f} {b:>12,.0f} {b / a:>6.2f} {peak / 1e9:>13.1f}")
    ratios = sorted(b / a for a, b, _ in rows)
    print(
        f"median ratio {statistics.median(ratios):.2f} (min {ratios[0]:.2f}, max {ratios[-1]:.2f})"
    )
    return statistics.median(ratios)


def schedule(lengths, slots: int, prefill_rows: int, shrink: int) -> list[int]:
    """The slot sampler's rules replayed in Python for `lengths` (one group, requests in order,
    no stop token): the decode steps of each phase (`slots.phase_sizes`). A refill waits for
    `prefill_rows` free slots (or the requests left) and samples each request's first token, so
    a request of length L then takes L - 1 decode steps; once none waits, each phase of half as
    many slots begins when the busy ones fit in it. The static batch computes
    len(lengths) x max(lengths) row-steps."""
    from flowrl_jax.rollout.slots import phase_sizes

    sizes = phase_sizes(slots, shrink)
    queue, left, steps = [int(n) for n in lengths], [], [0] * len(sizes)
    while queue and slots - len(left) >= min(prefill_rows, len(queue)):
        take = min(prefill_rows, len(queue), slots - len(left))
        left += [n - 1 for n in queue[:take] if n > 1]
        queue = queue[take:]
    for i, size in enumerate(sizes):
        last = i == len(sizes) - 1
        while left and (last or queue or len(left) > size // 2):
            steps[i] += 1
            left = [n - 1 for n in left if n > 1]
            while queue and size - len(left) >= min(prefill_rows, len(queue)):
                take = min(prefill_rows, len(queue), size - len(left))
                left += [n - 1 for n in queue[:take] if n > 1]
                queue = queue[take:]
    return steps


def row_steps(lengths, slots: int, prefill_rows: int, shrink: int) -> int:
    """Row-steps of `schedule`: each phase's steps times its slots."""
    from flowrl_jax.rollout.slots import phase_sizes

    steps = schedule(lengths, slots, prefill_rows, shrink)
    return sum(s * n for s, n in zip(phase_sizes(slots, shrink), steps))


def print_schedules() -> None:
    """Row-steps of each long-tail size's schedule, with and without shrinking, against the
    static batch's."""
    print(f"{'size':>5} {'static':>9} {'slots':>9} {'shrink 2':>9} {'ratio':>6} {'ratio 2':>8}")
    for name, (prompts_n, n, _, limit, slots, prefill_rows) in LONG_TAIL.items():
        lengths = length_table(prompts_n * n, limit)
        static = len(lengths) * int(lengths.max())
        plain = row_steps(lengths, slots, prefill_rows, 0)
        shrunk = row_steps(lengths, slots, prefill_rows, 2)
        print(
            f"{name:>5} {static:>9} {plain:>9} {shrunk:>9} {static / plain:>6.2f} "
            f"{static / shrunk:>8.2f}"
        )


def step_cost(limit_steps=(512, 64), slot_counts=(32, 128)) -> None:
    """Where the slot sampler's time goes: seconds per decode step and per row-step of the static
    batch and of the slot sampler, every request sampling exactly `limit` tokens (no long tail:
    the slots run in whole waves), tiny model, 16 prompts x 8 samples of 32 tokens, fp32. The
    best of two timed runs after a warm-up each."""
    from flowrl_jax.models import Model, config_from_hf, tiny
    from flowrl_jax.rollout import Sampler, SamplingParams
    from flowrl_jax.rollout.slots import SlotSettings

    cfg = config_from_hf(dict(tiny.BENCH_HF_CONFIGS["tiny"]))
    params = Model.random(cfg, 0).params
    P, N, B, n = 32, max(limit_steps), 16, 8
    prompts = np.random.default_rng(0).integers(3, cfg.vocab_size, (B, P)).tolist()
    sp = SamplingParams(max_new_tokens=N, n=n, temperature=1.0)
    runs = {"static": (Sampler(cfg, prompt_buckets=(P,)), B * n)}
    for s in slot_counts:
        runs[f"slots {s}"] = (Sampler(cfg, prompt_buckets=(P,), slots=SlotSettings(slots=s)), s)
    print(f"{'limit':>5} {'sampler':>9} {'s':>7} {'steps':>6} {'ms/step':>8} {'us/row-step':>12}")
    for limit in limit_steps:
        limits = np.full(B * n, limit, np.int32)
        for name, (sampler, rows) in runs.items():
            sampler(params, prompts, jax.random.key(0), sp, limits=limits)
            times = []
            for i in range(2):
                t0 = time.perf_counter()
                sampler(params, prompts, jax.random.key(i + 1), sp, limits=limits)
                times.append(time.perf_counter() - t0)
            steps = limit * (B * n // rows)  # the slots decode in whole waves here
            t = min(times)
            print(
                f"{limit:>5} {name:>9} {t:>7.2f} {steps:>6} {1e3 * t / steps:>8.2f} "
                f"{1e6 * t / (steps * rows):>12.1f}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--sizes", default="tiny,small")
    parser.add_argument(
        "--long_tail",
        action="store_true",
        help="the slot sampler against our static batch on a long-tail length table",
    )
    parser.add_argument(
        "--step_cost",
        action="store_true",
        help="seconds per decode step and per row-step, static batch against slots",
    )
    parser.add_argument(
        "--schedule",
        action="store_true",
        help="row-steps of the long-tail tables' slot schedules against the static batch",
    )
    args = parser.parse_args()
    if args.schedule:
        print_schedules()
        return
    if args.step_cost:
        step_cost()
        return
    if args.long_tail:
        print(f"jax {jax.__version__}, backend {jax.default_backend()}")
        ratios = {name: long_tail(name, args.pairs) for name in args.sizes.split(",")}
        print("refill_vs_static " + " ".join(f"{k}={v:.2f}" for k, v in ratios.items()))
        return
    import torch
    import transformers

    print(
        f"jax {jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"transformers {transformers.__version__}, backend {jax.default_backend()}"
    )
    ratios = {name: run_size(name, args.pairs) for name in args.sizes.split(",")}
    print("ratio_vs_transformers " + " ".join(f"{k}={v:.2f}" for k, v in ratios.items()))


if __name__ == "__main__":
    main()
