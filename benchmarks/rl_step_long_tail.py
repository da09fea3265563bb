"""One RL step on a long-tail table of response lengths: our refilling slot sampler with packed
scoring and update against our static batch with padded rows (the step before issue #33) and
against Tunix 0.1.7's GRPO learner, in one process, interleaved.

    python -m benchmarks.rl_step_long_tail [--steps 6] [--no-tunix] [--pack_rows 2,16]
    # Tunix: requirements-bench.txt

The work: benchmarks/rl_step.py's (the tiny Qwen3 from one HF checkpoint, fp32, 8 prompts of 32
tokens x 8 samples, a compiled even-id reward, GRPO with the KL term / FlowRL, one AdamW update on
the 64 sequences), with 512 new tokens and each request's response length drawn once from
benchmarks/sampler.py's `length_table` (log-normal, median 128, a few at 512). Our rows stop each
request at its length (the sampler's `limits`); they run the phased `Trainer.step` (the fused
program takes no per-request limits), remat 'dots', micro-batches of `--pack_rows` rows of 544
tokens on both sides (default 2; the same memory):
- static + padded: the static batch, its 64 rows as 64 / pack_rows micro-batches;
- refill + packed: 16 refilling slots, rows of 544 tokens packed, as many micro-batches as the
  step's tokens fill. A step's last micro-batch is partly empty rows, which cost as much as full
  ones, so finer micro-batches waste less: at 16 rows the step's ~25 packed rows run as 32.
  Each extra value in `--pack_rows` adds a refill + packed GRPO row at that setting; the static
  row and the ratios use the first.
Tunix cannot stop a request at a given length, but its static batch decodes until its longest row
stops and trains on rows padded to that length; with one request at 512 in the table, its step is
the step where every row samples 512 tokens (EOS outside the vocabulary), which is what it runs.
The last line reads `long_tail_vs_tunix grpo=<x> flowrl=<y>` (Tunix's step time over our refill +
packed steps', medians over rounds 2..) and `refill_pack_vs_static grpo=<x>` before it.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile

import jax
import numpy as np

from benchmarks import rl_step
from benchmarks.sampler import length_table

NEW = 512
SLOTS = 16
ROW = rl_step.PROMPT_LEN + NEW
REFILL_GRPO, REFILL_FLOWRL, STATIC = (
    "ours refill+packed GRPO",
    "ours refill+packed FlowRL",
    "ours static+padded GRPO",
)


def our_rows(pack_rows: list[int]) -> dict:
    """name -> (algorithm, rows per micro-batch, refill + packed or static + padded)."""
    rows = {
        REFILL_GRPO: ("grpo", pack_rows[0], True),
        REFILL_FLOWRL: ("flowrl", pack_rows[0], True),
    }
    rows |= {f"{REFILL_GRPO}, {r} rows": ("grpo", r, True) for r in pack_rows[1:]}
    return rows | {STATIC: ("grpo", pack_rows[0], False)}


def pack_rows(text: str) -> list[int]:
    """--pack_rows: comma-separated rows per micro-batch, each dividing the step's sequences."""
    sequences = rl_step.PROMPTS * rl_step.GROUP
    rows = [int(x) for x in text.split(",")]
    if any(r < 1 or sequences % r for r in rows):
        raise argparse.ArgumentTypeError(f"every value must divide the {sequences} sequences")
    return rows


def more_arguments(parser: argparse.ArgumentParser):
    parser.add_argument(
        "--pack_rows",
        type=pack_rows,
        default=[2],
        help="packed rows per micro-batch, comma-separated: one GRPO row each (the first: all)",
    )


class Forced:
    """The trainer's sampler, each request stopped at its length in the table."""

    def __init__(self, sampler, limits):
        self.sampler, self.limits = sampler, limits

    def __call__(self, params, prompts, key, sp):
        return self.sampler(params, prompts, key, sp, limits=self.limits)

    def __getattr__(self, name):
        return getattr(self.sampler, name)


def our_trainer(path, algorithm, rows, refill_pack, mesh, workdir, limits):
    from flowrl_jax.config import base_config
    from flowrl_jax.models import load_hf
    from flowrl_jax.trainer.loop import Trainer

    config = base_config()
    config.workdir = workdir
    config.algorithm.name = algorithm
    if algorithm == "grpo":
        config.algorithm.grpo.kl_coef = rl_step.KL
    config.rollout.n = rl_step.GROUP
    config.rollout.max_new_tokens = NEW
    config.rollout.temperature = 1.0
    config.rollout.prompt_buckets = (rl_step.PROMPT_LEN,)
    config.train.prompts_per_step = rl_step.PROMPTS
    config.train.minibatch_size = 0
    config.train.micro_batches = rl_step.PROMPTS * rl_step.GROUP // rows
    config.train.fused = "false"
    if refill_pack:
        config.rollout.slots = SLOTS
        config.train.pack_length = ROW
        config.train.micro_batch_tokens = rows * ROW
    config.optimizer.learning_rate = rl_step.LEARNING_RATE
    config.optimizer.warmup_steps = 0
    model = load_hf(path, mesh=mesh, remat="dots")
    tokenizer = rl_step.IdTokenizer(model.cfg.vocab_size)
    trainer = Trainer(config, model, tokenizer, mesh, rl_step.make_task())
    trainer.sp = dataclasses.replace(trainer.sp, stop_tokens=())
    trainer.sampler = Forced(trainer.sampler, limits)
    return trainer


def run(steps: int, with_tunix: bool, lengths: np.ndarray, pack_rows: list[int]):
    from flowrl_jax import mesh as mesh_lib

    ours_rows = our_rows(pack_rows)
    rows = {name: rl_step.Row() for name in [*ours_rows] + (["Tunix GRPO"] if with_tunix else [])}
    rng = np.random.default_rng(0)
    prompts = rng.integers(3, 512, (rl_step.PROMPTS, rl_step.PROMPT_LEN)).tolist()
    draw = lambda: (prompts, list(range(rl_step.PROMPTS)))
    mesh = mesh_lib.make_mesh({}, jax.devices()[:1])
    with tempfile.TemporaryDirectory() as tmp:
        hf = rl_step.write_checkpoint(f"{tmp}/ckpt")
        limits = jax.numpy.asarray(lengths, jax.numpy.int32)
        with jax.set_mesh(mesh):
            ours = {
                name: our_trainer(f"{tmp}/ckpt", *how, mesh, f"{tmp}/{i}", limits)
                for i, (name, how) in enumerate(ours_rows.items())
            }

        def our_round(index: int):
            rl_step.step_round(ours, rows, index, draw, mesh, int(lengths.max()))
            print(
                f"round {index + 1}/{steps}: "
                + "  ".join(f"{k} {rows[k].steps[-1]:.2f} s" for k in rows if rows[k].steps),
                flush=True,
            )

        if not with_tunix:
            for i in range(steps):
                our_round(i)
            return rows
        rl_step.race_tunix(f"{tmp}/ckpt", hf, prompts, steps, rows["Tunix GRPO"], our_round, NEW)
    return rows


def ratio(rows, a: str, b: str) -> tuple[float, float, float]:
    """Median (min, max) over rounds 2.. of row a's step time over row b's, round by round."""
    r = sorted(x / y for x, y in zip(rows[a].steps[1:], rows[b].steps[1:]))
    return statistics.median(r), r[0], r[-1]


def main():
    args = rl_step.arguments(__doc__, plot=False, more=more_arguments)
    lengths = length_table(rl_step.PROMPTS * rl_step.GROUP, NEW)
    rows = run(args.steps, not args.no_tunix, lengths, args.pack_rows)
    print(
        f"\n{rl_step.PROMPTS} prompts x {rl_step.GROUP} samples, prompt {rl_step.PROMPT_LEN} + up to "
        f"{NEW} new tokens, tiny Qwen3, fp32, {jax.devices()[0].device_kind}; lengths: median "
        f"{np.median(lengths):.0f}, mean {lengths.mean():.1f}, max {lengths.max()}, "
        f"{int((lengths == NEW).sum())} at {NEW}; medians over rounds 2-{args.steps}; refill + "
        f"packed: {args.pack_rows[0]} packed rows per micro-batch"
    )
    print(
        f"{'row':<36} {'first s':>8} {'step s':>7} " + " ".join(f"{p:>9}" for p in rl_step.PHASES)
    )
    for name, row in rows.items():
        phases = " ".join(
            f"{row.median(p):>9.3f}" if not np.isnan(row.median(p)) else f"{'-':>9}"
            for p in rl_step.PHASES
        )
        print(f"{name:<36} {row.steps[0]:>8.2f} {row.median():>7.3f} {phases}")
    static = ratio(rows, STATIC, REFILL_GRPO)
    print(f"static+padded / refill+packed GRPO: {static[0]:.2f} ({static[1]:.2f}-{static[2]:.2f})")
    grpo = flowrl = (float("nan"),) * 3
    if not args.no_tunix:
        grpo = ratio(rows, "Tunix GRPO", REFILL_GRPO)
        flowrl = ratio(rows, "Tunix GRPO", REFILL_FLOWRL)
        print(
            f"Tunix / refill+packed: GRPO {grpo[0]:.2f} ({grpo[1]:.2f}-{grpo[2]:.2f}), "
            f"FlowRL {flowrl[0]:.2f} ({flowrl[1]:.2f}-{flowrl[2]:.2f})"
        )
    print(f"refill_pack_vs_static grpo={static[0]:.2f}")
    print(f"long_tail_vs_tunix grpo={grpo[0]:.2f} flowrl={flowrl[0]:.2f}")


if __name__ == "__main__":
    main()
