"""Our RL step at two revisions of the code: did a change slow it down?

    python -m benchmarks.rl_step_revisions --base=REV [--new=DIR] [--mode programs] [--rounds 10]
        [--train-step]
    python -m benchmarks.rl_step_revisions --base=REV --mode workers [--rounds 10]
    python -m benchmarks.rl_step_revisions --base=REV --mode processes [--pairs 4] [--steps 6]

Both sides do the work of benchmarks/rl_step.py's rows (as each tree's own rl_step.py defines them),
`--base` in a git worktree made for the run, `--new` (default: this working tree) where it is.

`--mode programs` (the default) times the fused rows' compiled programs in one process. In each
tree a subprocess builds that tree's trainer for each fused row and exports the row's whole RL step
(`jax.export`, with its inputs: state, reference weights, prompts); this process then compiles both
trees' programs and runs them interleaved, base and new alternately (the order swapped every round)
for `--rounds` rounds after a warm-up call, so that both sides see the same machine at the same
moments. This is the comparison the guide asks for (one process, A B A B); it times the device
program only, without the host's step bookkeeping and without the phase-time callbacks.
With `--train-step` it also times benchmarks/train_step.py's update (ours, at its tiny and small
work): the program each tree's flowrl_jax compiles for it, set up in both trees by this tree's
`train_step.our_update` (older trees' train_step.py set it up inline, the same calls).

`--mode workers` times all four rows, the phased one and the host code included: one long-lived
worker process per tree builds that tree's trainers and compiles them, then runs one RL step of
the row this process names, when it names it; this process times each request and asks the two
workers alternately (the order swapped every round), so only one of them computes at a time.

`--mode processes` runs `python -m benchmarks.rl_step --no-tunix --steps N` in each tree
alternately, `--pairs` times, and reads each run's median step per row: all four rows including
the phased one, host code included, but two processes per pair, which a busy machine can tell
apart.

Each mode prints, per row, the median of each side with its range and the median of the per-pair
ratios new / base with their range; the last line reads `rl_step_new_over_base <row>=<ratio> ...`.
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

# Only rl_step: the subprocesses import this script at other revisions, whose benchmarks package
# may lack what this one has (`seconds` is imported where the parent times: `interleaved`).
from benchmarks import rl_step

ROWS = tuple(rl_step.ROWS)  # our rows
FUSED_ROWS = tuple(name for name, (_, fused, _) in rl_step.ROWS.items() if fused)
NAME_WIDTH = 26  # benchmarks/rl_step.py's report: the row name, then first s, step s, phases


def parse(stdout: str) -> dict[str, float]:
    """The median step seconds of each row from one rl_step run's table."""
    medians = {}
    for line in stdout.splitlines():
        name = line[:NAME_WIDTH].strip()
        if name in ROWS:
            medians[name] = float(line[NAME_WIDTH:].split()[1])
    missing = [r for r in ROWS if r not in medians]
    if missing:
        raise RuntimeError(f"rl_step printed no row {missing}; its output ended:\n{stdout[-2000:]}")
    return medians


def in_tree(tree: str, argv: list[str]) -> str:
    """Runs a command with `tree`'s flowrl_jax and benchmarks (not the installed ones); its stdout."""
    env = dict(os.environ, PYTHONPATH=tree)
    out = subprocess.run(argv, cwd=tree, env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{' '.join(argv)} in {tree} failed:\n{out.stderr[-3000:]}")
    return out.stdout


def is_key(x) -> bool:
    return jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def exported(fn, args) -> tuple[bytes, list[np.ndarray]]:
    """`fn(*args)` as a serialized program over the flat leaves of `args` (random keys as their
    uint32 data), and those leaves: the program's pytrees (optax states, named tuples) need not be
    registered for serialization, and the leaves load in any process."""
    flat, treedef = jax.tree.flatten(args)
    keys = [is_key(x) for x in flat]

    def flat_fn(*leaves):
        leaves = [jax.random.wrap_key_data(x) if k else x for x, k in zip(leaves, keys)]
        out = fn(*jax.tree.unflatten(treedef, leaves))
        return [jax.random.key_data(x) if is_key(x) else x for x in jax.tree.leaves(out)]

    leaves = [np.asarray(jax.random.key_data(x) if k else x) for x, k in zip(flat, keys)]
    program = jax.export.export(jax.jit(flat_fn))(*leaves)
    return bytes(program.serialize()), leaves


def loaded(blob: bytes, leaves: list[np.ndarray]):
    """An `exported` program compiled in this process, and its inputs on the device."""
    program = jax.export.deserialize(bytearray(blob))
    args = [jax.device_put(x) for x in leaves]
    return jax.jit(program.call).lower(*args).compile(), args


def cost(compiled) -> tuple[float, float]:
    """XLA's own count of a compiled program's FLOPs and bytes accessed: the same for two programs
    that do the same work, whatever the machine's noise."""
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis  # older jax: one per device
    return analysis.get("flops", 0.0), analysis.get("bytes accessed", 0.0)


def work():
    """The prompts (rl_step.run's draw) and the one-device mesh both sides' subprocesses use."""
    from flowrl_jax import mesh as mesh_lib

    rng = np.random.default_rng(0)
    prompts = rng.integers(3, 512, (rl_step.PROMPTS, rl_step.PROMPT_LEN)).tolist()
    return prompts, mesh_lib.make_mesh({}, jax.devices()[:1])


def export_fused_rows(directory: str):
    """Run in a subprocess at one tree: that tree's fused rows' RL steps, exported to
    `directory`/<row index>.pkl. Uses only what both sides' trainers have."""
    from flowrl_jax import mesh as mesh_lib

    prompts, mesh = work()
    answers = np.arange(rl_step.PROMPTS, dtype=np.int32)
    on_mesh = lambda x: mesh_lib.to_device(x, mesh_lib.batch_sharding(mesh, np.ndim(x)))
    with tempfile.TemporaryDirectory() as tmp, jax.set_mesh(mesh):
        rl_step.write_checkpoint(f"{tmp}/ckpt")
        for i, (name, how) in enumerate(rl_step.ROWS.items()):
            if name not in FUSED_ROWS:
                continue
            trainer = rl_step.our_trainer(f"{tmp}/ckpt", *how, mesh, f"{tmp}/{i}")
            t = trainer.config.train  # host callbacks do not export (a bool before 2026-12-05)
            t.fused_phase_times = False if isinstance(t.fused_phase_times, bool) else "false"
            tokens, mask, _ = trainer.sampler.pad(prompts)
            step = trainer._compile_fused(tokens.shape[1])
            args = (trainer.state, trainer.ref_params, *map(on_mesh, (tokens, mask, answers)))
            with open(os.path.join(directory, f"{i}.pkl"), "wb") as f:
                pickle.dump((name, *exported(step, args)), f)


def export_train_steps(directory: str):
    """Run in a subprocess at one tree: benchmarks/train_step.py's update at each of its sizes, on
    a random model of the size's shape (`init_params`, seed 0), exported to `directory`/t<i>.pkl."""
    import importlib.util

    from flowrl_jax.models import config_from_hf, init_params, tiny

    # This tree's train_step.py over the other tree's flowrl_jax (its `benchmarks` imports resolve
    # to the other tree's package, which has what it needs: `seconds`, `matmul_peak`).
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_step.py")
    spec = importlib.util.spec_from_file_location("train_step_of_new_tree", path)
    train_step = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = train_step  # its dataclasses look their module up there
    spec.loader.exec_module(train_step)
    for i, (size, (batch, prompt, response)) in enumerate(train_step.WORK.items()):
        cfg = config_from_hf(tiny.BENCH_HF_CONFIGS[size], remat=train_step.REMAT)
        params = init_params(cfg, jax.random.key(0))
        tokens, rewards, group = train_step.make_batch(0, batch, prompt, response, cfg.vocab_size)
        ours = train_step.our_update(
            cfg, params, tokens, rewards, group, prompt, train_step.MICRO_BATCHES
        )
        args = (ours.state, ours.tokens, ours.mask, ours.prepared)
        with open(os.path.join(directory, f"t{i}.pkl"), "wb") as f:
            pickle.dump((f"train step {size}", *exported(ours.step, args)), f)


def progress(label: str, times: dict[str, dict[str, list[float]]]):
    """One line per round: each row's latest base / new seconds."""
    latest = (f"{n} {t['base'][-1]:.2f}/{t['new'][-1]:.2f} s" for n, t in times.items())
    print(f"{label}: " + "  ".join(latest), flush=True)


def interleaved(rows, sides, rounds: int, run) -> dict[str, dict[str, list[float]]]:
    """Seconds of `run(row, side)` for each row, both sides in turn, the order swapped every
    round: both sides see the machine at the same moments."""
    from benchmarks import seconds  # here: the subprocesses import this script at older trees

    times = {row: {side: [] for side in sides} for row in rows}
    for r in range(rounds):
        for row in rows:
            for side in sides if r % 2 == 0 else sides[::-1]:
                times[row][side].append(seconds(lambda: run(row, side)))  # noqa: B023 (called now)
        progress(f"round {r + 1}/{rounds}", times)
    return times


def serve():
    """Run in a subprocess at one tree: builds that tree's trainers for our rows, steps each once
    (the compiles), says "ready", then for each row name read from stdin runs one RL step of that
    row and says "done". Timing is the caller's."""
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever the trainers print goes to stderr, not into the answers
    prompts, mesh = work()
    draw = lambda: (prompts, list(range(rl_step.PROMPTS)))  # the same prompts every step
    with tempfile.TemporaryDirectory() as tmp, jax.set_mesh(mesh):
        rl_step.write_checkpoint(f"{tmp}/ckpt")
        steps = {}
        for i, (name, how) in enumerate(rl_step.ROWS.items()):
            trainer = rl_step.our_trainer(f"{tmp}/ckpt", *how, mesh, f"{tmp}/{i}")
            steps[name] = trainer.fused_step if trainer.fused else trainer.step

        def step(name: str):
            metrics = steps[name](draw)
            assert np.isfinite(metrics["loss"]), (name, metrics["loss"])

        def say(word: str):
            print(word, file=answers, flush=True)

        for name in steps:  # the compiles
            step(name)
        say("ready")
        for line in sys.stdin:
            step(line.strip())
            say("done")


class Worker:
    """A `serve` subprocess at one tree; its stderr goes to a file, read back when it fails."""

    def __init__(self, tree: str, log: str):
        self.log = log
        argv = [sys.executable, os.path.abspath(__file__), "--serve"]
        env = dict(os.environ, PYTHONPATH=tree)
        with open(log, "w") as err:
            self.proc = subprocess.Popen(
                argv,
                cwd=tree,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )

    def answer(self, expected: str):
        line = self.proc.stdout.readline().strip()
        if line != expected:
            with open(self.log) as f:
                raise RuntimeError(f"worker said {line!r}, not {expected!r}:\n{f.read()[-3000:]}")

    def step(self, row: str):
        self.proc.stdin.write(row + "\n")
        self.proc.stdin.flush()
        self.answer("done")

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def time_workers(trees: dict[str, str], rounds: int) -> dict[str, dict[str, list[float]]]:
    """One worker per tree; each round, every row stepped by both, in alternating order."""
    with tempfile.TemporaryDirectory() as scratch:
        workers = {side: Worker(tree, f"{scratch}/{side}.log") for side, tree in trees.items()}
        try:
            for worker in workers.values():  # both compile at once: untimed
                worker.answer("ready")
            return interleaved(ROWS, list(trees), rounds, lambda row, side: workers[side].step(row))
        finally:
            for worker in workers.values():
                worker.close()


def time_programs(
    trees: dict[str, str], rounds: int, train_step: bool = False
) -> dict[str, dict[str, list[float]]]:
    """Exports the fused rows (and with `train_step` the train-step benchmark's updates) in each
    tree, then times both sides' programs interleaved."""
    programs = {}
    with tempfile.TemporaryDirectory() as scratch:
        for side, tree in trees.items():
            os.makedirs(f"{scratch}/{side}")
            script = os.path.abspath(__file__)
            argv = [sys.executable, script, "--export-to", f"{scratch}/{side}"]
            in_tree(tree, argv + ["--train-step"] * train_step)
            for file in sorted(os.listdir(f"{scratch}/{side}")):
                with open(f"{scratch}/{side}/{file}", "rb") as f:
                    name, blob, leaves = pickle.load(f)
                programs[name, side] = loaded(blob, leaves)
                jax.block_until_ready(programs[name, side][0](*programs[name, side][1]))  # warm-up
    rows = list(dict.fromkeys(name for name, _ in programs))
    for name in rows:
        (fb, bb), (fn, bn) = (cost(programs[name, side][0]) for side in trees)
        print(f"{name}: XLA cost base {fb:.4g} FLOP, {bb:.4g} B; new {fn:.4g} FLOP, {bn:.4g} B")

    def run(row: str, side: str):
        step, args = programs[row, side]
        jax.block_until_ready(step(*args))

    return interleaved(rows, list(trees), rounds, run)


def time_processes(trees: dict[str, str], pairs: int, steps: int):
    argv = [sys.executable, "-m", "benchmarks.rl_step", "--no-tunix", "--steps", str(steps)]
    times = {name: {side: [] for side in trees} for name in ROWS}
    for i in range(pairs):
        for side, tree in trees.items():
            for name, median in parse(in_tree(tree, argv)).items():
                times[name][side].append(median)
        progress(f"pair {i + 1}/{pairs}", times)
    return times


def summary(times: dict[str, dict[str, list[float]]], what: str) -> dict[str, float]:
    """Per row: each side's median (min-max) and the median (min-max) of the per-pair ratios."""
    pairs = len(next(iter(times.values()))["base"])
    print(f"\n{pairs} pairs; {what}")
    print(
        f"{'row':<34} {'base s':>7} {'(min-max)':>13} {'new s':>7} {'(min-max)':>13} "
        f"{'new/base':>9} {'(min-max)':>11}"
    )
    ratios = {}
    for row, sides in times.items():
        b, n = sides["base"], sides["new"]
        per_pair = sorted(y / x for x, y in zip(b, n))
        ratios[row] = statistics.median(per_pair)
        print(
            f"{row:<34} {statistics.median(b):>7.3f} ({min(b):.3f}-{max(b):.3f}) "
            f"{statistics.median(n):>7.3f} ({min(n):.3f}-{max(n):.3f}) {ratios[row]:>9.3f} "
            f"({per_pair[0]:.2f}-{per_pair[-1]:.2f})"
        )
    return ratios


def main(argv=None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", help="the git revision to compare against")
    parser.add_argument("--new", default=".", help="the source tree of the new side")
    parser.add_argument("--mode", choices=("programs", "workers", "processes"), default="programs")
    parser.add_argument(
        "--rounds", type=int, default=10, help="programs, workers: timed steps per side"
    )
    parser.add_argument("--pairs", type=int, default=4, help="processes: runs per side")
    parser.add_argument("--steps", type=int, default=6, help="processes: rounds per run")
    parser.add_argument(
        "--train-step", action="store_true", help="programs: also train_step.py's updates"
    )
    parser.add_argument("--export-to", help=argparse.SUPPRESS)  # the per-tree subprocesses
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.export_to:
        export_fused_rows(args.export_to)
        if args.train_step:
            export_train_steps(args.export_to)
        return {}
    if args.serve:
        serve()
        return {}
    if not args.base:
        parser.error("--base is required")
    from benchmarks import worktree  # here: the subprocesses import this script at older trees

    new_tree = os.path.abspath(args.new)
    with worktree(new_tree, args.base) as base_tree:
        trees = {"base": base_tree, "new": new_tree}
        if args.mode == "programs":
            times = time_programs(trees, args.rounds, args.train_step)
            what = "one process, each call one program (s), sides alternating"
        elif args.mode == "workers":
            times = time_workers(trees, args.rounds)
            what = "one worker per side, each request one RL step (s), sides alternating"
        else:
            times = time_processes(trees, args.pairs, args.steps)
            what = "each run's median step (s) over its rounds after the first"
    ratios = summary(times, what)
    label = lambda row: row.replace("ours ", "").replace(", ", "_").replace(" ", "_").lower()
    print("rl_step_new_over_base " + " ".join(f"{label(r)}={v:.3f}" for r, v in ratios.items()))
    return ratios


if __name__ == "__main__":
    main()
