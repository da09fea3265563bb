"""Our RL step at two revisions of the code: did a change slow it down?

    python -m benchmarks.rl_step_revisions --base=REV [--new=DIR] [--pairs 4] [--steps 6]

Runs `python -m benchmarks.rl_step --no-tunix --steps N` (our four rows, benchmarks/rl_step.py) in
a checkout of `--base` (a git worktree made for the run) and in `--new` (default: this working
tree), alternately, base then new, `--pairs` times. Each run reports per row the median step time
over its rounds after the first (the first holds the compiles); this prints, per row, the median
over runs of each side, their spread, and the ratio new / base of the medians, with its range over
the pairs (each pair's new over the same pair's base). The two sides are separate processes, one
after the other, not one process: a code change cannot be timed in one. The last line reads
`rl_step_new_over_base <row>=<ratio> ...`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

from benchmarks import rl_step

ROWS = tuple(rl_step.ROWS)  # our rows
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


def run_once(tree: str, steps: int) -> dict[str, float]:
    argv = [sys.executable, "-m", "benchmarks.rl_step", "--no-tunix", "--steps", str(steps)]
    env = dict(os.environ, PYTHONPATH=tree)  # that tree's flowrl_jax, not the installed one
    out = subprocess.run(argv, cwd=tree, env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{' '.join(argv)} in {tree} failed:\n{out.stderr[-3000:]}")
    return parse(out.stdout)


def summary(base: list[dict], new: list[dict]) -> dict[str, float]:
    print(f"\n{len(base)} pairs, each run's median step (s) over its rounds after the first")
    print(
        f"{'row':<34} {'base s':>7} {'(min-max)':>13} {'new s':>7} {'(min-max)':>13} "
        f"{'new/base':>9} {'(min-max)':>11}"
    )
    ratios = {}
    for row in ROWS:
        b, n = [r[row] for r in base], [r[row] for r in new]
        per_pair = sorted(y / x for x, y in zip(b, n))
        ratios[row] = statistics.median(n) / statistics.median(b)
        print(
            f"{row:<34} {statistics.median(b):>7.3f} ({min(b):.3f}-{max(b):.3f}) "
            f"{statistics.median(n):>7.3f} ({min(n):.3f}-{max(n):.3f}) {ratios[row]:>9.3f} "
            f"({per_pair[0]:.2f}-{per_pair[-1]:.2f})"
        )
    return ratios


def main(argv=None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the git revision to compare against")
    parser.add_argument("--new", default=".", help="the source tree of the new side")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6, help="rounds per run, the first compiling")
    args = parser.parse_args(argv)
    new_tree = os.path.abspath(args.new)
    with tempfile.TemporaryDirectory() as scratch:
        base_tree = os.path.join(scratch, "base")
        subprocess.run(
            ["git", "worktree", "add", "--detach", "-q", base_tree, args.base],
            cwd=new_tree,
            check=True,
        )
        try:
            base, new = [], []
            for i in range(args.pairs):
                base.append(run_once(base_tree, args.steps))
                new.append(run_once(new_tree, args.steps))
                print(f"pair {i + 1}/{args.pairs}: base {base[-1]}  new {new[-1]}", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", base_tree], cwd=new_tree)
    ratios = summary(base, new)
    label = lambda row: row.replace("ours ", "").replace(", ", "_").replace(" ", "_").lower()
    print("rl_step_new_over_base " + " ".join(f"{label(r)}={v:.3f}" for r, v in ratios.items()))
    return ratios


if __name__ == "__main__":
    main()
