"""Run `python -m flowrl_jax.train` over a grid of config overrides, one run after another.

    python launch/sweep.py --config=configs/default.py --workdir=runs/sweep \
        --grid model.tiny_family=qwen2,qwen3,llama --grid seed=0,1,2 [--dry_run]

Each run gets `<workdir>/<key=value,...>` as its workdir; its output goes to `run.log` there. A run
that fails is reported and the sweep goes on; the exit code is the number of failed runs.
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys


def expand(grid: list[str]) -> list[dict[str, str]]:
    axes = []
    for item in grid:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise SystemExit(f"--grid {item!r}: expected key=v1,v2,...")
        axes.append([(key, v) for v in values.split(",")])
    return [dict(combo) for combo in itertools.product(*axes)]


def commands(config: str, workdir: str, runs: list[dict[str, str]], extra: list[str]):
    for overrides in runs:
        name = ",".join(f"{k}={v}" for k, v in overrides.items()) or "default"
        run_dir = os.path.join(workdir, name)
        argv = [
            sys.executable,
            "-m",
            "flowrl_jax.train",
            f"--config={config}",
            f"--config.workdir={run_dir}",
        ]
        argv += [f"--config.{k}={v}" for k, v in overrides.items()] + extra
        yield name, run_dir, argv


def main(args=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/default.py")
    parser.add_argument("--workdir", default="runs/sweep")
    parser.add_argument("--grid", action="append", default=[], help="key=v1,v2,... (repeatable)")
    parser.add_argument("--dry_run", action="store_true", help="print the commands only")
    known, extra = parser.parse_known_args(args)
    runs = list(commands(known.config, known.workdir, expand(known.grid), extra))
    failed = 0
    for i, (name, run_dir, argv) in enumerate(runs, 1):
        print(f"[{i}/{len(runs)}] {name}: {' '.join(argv)}", flush=True)
        if known.dry_run:
            continue
        os.makedirs(run_dir, exist_ok=True)
        with open(os.path.join(run_dir, "run.log"), "w") as log:
            code = subprocess.call(argv, stdout=log, stderr=subprocess.STDOUT)
        if code:
            failed += 1
            print(f"  failed with exit code {code}; see {run_dir}/run.log", flush=True)
    print(f"{len(runs) - failed}/{len(runs)} runs succeeded")
    return failed


if __name__ == "__main__":
    sys.exit(main())
