"""Run `python -m flowrl_jax.train` over a grid of config overrides (from the repository root).

    python launch/sweep.py --config=configs/default.py --workdir=runs/sweep \
        --grid model.tiny_family=qwen2,qwen3,llama --grid seed=0,1,2 [--dry_run | --print]
    # FlowRL and every baseline on one paper config; unknown arguments go to every run:
    python launch/sweep.py --config=configs/qwen2_5_7b_math.py --workdir=/mnt/shared/sweep \
        --grid algorithm.name=flowrl,grpo,ppo,reinforce_pp,dapo,gspo \
        --config.model.checkpoint=/data/Qwen2.5-7B

Each --grid key=v1,v2,... is an axis; the runs are the product of the axes, and each run's
config.workdir is `<workdir>/<key=value,...>`. Before anything runs, every run's overrides are
parsed against the config file exactly as the trainer parses them (ml_collections config_flags), so
an unknown key or a value of the wrong type fails here, once, instead of in every run.

Local (default): the runs go one after another, each writing run.log in its workdir (on a gs://
--workdir, uploaded when the run ends); a failed run is
reported and the sweep goes on; the exit code is the number of failed runs. --dry_run prints what
would run. --print prints one shell command per run and nothing else, for a scheduler:
    python launch/sweep.py ... --print > runs.txt  # then, in a SLURM array job of len(runs.txt):
    bash -c "$(sed -n "${SLURM_ARRAY_TASK_ID}p" runs.txt)"
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import shlex
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # the config files, and the runs' storage layer, import flowrl_jax
    sys.path.insert(0, ROOT)
KEY = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


class GridError(SystemExit):
    """A grid or override that cannot make runs; the message names the offending argument."""

    def __init__(self, message: str):
        super().__init__(f"sweep.py: {message}")


def expand(grid: list[str]) -> list[dict[str, str]]:
    """['a=1,2', 'b=x,y,z'] -> the 6 override dicts of the product, first axis slowest."""
    if not grid:
        raise GridError("no --grid given; expected at least one --grid key=v1,v2,...")
    axes, keys = [], set()
    for item in grid:
        key, sep, values = item.partition("=")
        if not sep or not KEY.fullmatch(key) or not values:
            raise GridError(f"--grid {item!r}: expected key=v1,v2,... (e.g. seed=0,1,2)")
        if key == "workdir":
            raise GridError("--grid workdir=...: every run gets its own workdir; use --workdir")
        if key in keys:
            raise GridError(f"--grid {item!r}: key {key!r} is already an axis")
        vals = values.split(",")
        if "" in vals:
            raise GridError(f"--grid {item!r}: empty value")
        if len(set(vals)) != len(vals):
            raise GridError(f"--grid {item!r}: repeats a value")
        keys.add(key)
        axes.append([(key, v) for v in vals])
    return [dict(combo) for combo in itertools.product(*axes)]


def fixed_config_overrides(extra: list[str]) -> list[str]:
    """The `--config.k=v` (or `--config.k v`) arguments among those passed to every run."""
    out, i = [], 0
    while i < len(extra):
        arg = extra[i]
        if arg.startswith("--config."):
            if "=" not in arg and i + 1 < len(extra) and not extra[i + 1].startswith("-"):
                arg, i = f"{arg}={extra[i + 1]}", i + 1
            out.append(arg)
        i += 1
    return out


def commands(config: str, workdir: str, runs: list[dict[str, str]], extra: list[str], python: str):
    """-> [(name, run_dir, argv)] for each run; refuses runs that would share a workdir."""
    fixed_keys = {a.partition("=")[0][len("--config.") :] for a in fixed_config_overrides(extra)}
    if "workdir" in fixed_keys:
        raise GridError("--config.workdir: every run gets its own workdir; use --workdir")
    clash = sorted(fixed_keys & set(runs[0]))
    if clash:
        raise GridError(f"--config.{clash[0]} is both a fixed override and a --grid axis")
    out, seen = [], {}
    for overrides in runs:
        # A value with '/' (a path) would nest directories: flatten it.
        name = ",".join(f"{k}={v}" for k, v in overrides.items()).replace("/", "_")
        run_dir = os.path.join(workdir, name)
        if run_dir in seen:
            raise GridError(
                f"runs {seen[run_dir]} and {overrides} would share the workdir {run_dir}"
            )
        seen[run_dir] = overrides
        argv = [python, "-m", "flowrl_jax.train", f"--config={config}"]
        argv += [f"--config.workdir={run_dir}"]
        argv += [f"--config.{k}={v}" for k, v in overrides.items()] + extra
        out.append((name, run_dir, argv))
    return out


def check(argv: list[str]) -> None:
    """Parse a run's --config arguments as the trainer's config flag does, or exit naming them."""
    from absl import flags
    from ml_collections import config_flags

    config_args = [a for a in argv if a.startswith("--config=")]
    config_args += fixed_config_overrides(argv)
    flag_values = flags.FlagValues()
    # sys_argv: the config flag finds its `--config.k=v` overrides there, not in sys.argv.
    config_flags.DEFINE_config_file(
        "config", None, flag_values=flag_values, sys_argv=["train", *config_args]
    )
    try:
        flag_values(["train", *config_args])
        flag_values.config  # noqa: B018 (loads the file and applies the overrides)
    except Exception as e:  # absl and ml_collections raise several types; all mean a bad argument
        raise GridError(f"{' '.join(config_args)}:\n  {type(e).__name__}: {e}") from e


def run_logged(argv: list[str], log_path: str) -> int:
    """Run `argv` with its output in `log_path`: a local file written as it runs, or on object
    storage (a gs:// --workdir) a local file uploaded when the run ends. -> the exit code."""
    from flowrl_jax import storage

    if not storage.is_remote(log_path):
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        with open(log_path, "w") as log:
            return subprocess.call(argv, stdout=log, stderr=subprocess.STDOUT)
    with tempfile.NamedTemporaryFile("w", prefix="flowrl-run-", suffix=".log") as log:
        try:
            return subprocess.call(argv, stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.flush()
            storage.upload(log.name, log_path)


def main(args=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/default.py")
    parser.add_argument("--workdir", default="runs/sweep", help="the runs' parent directory")
    parser.add_argument("--grid", action="append", default=[], help="key=v1,v2,... (repeatable)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry_run", action="store_true", help="print what would run; run nothing")
    mode.add_argument("--print", action="store_true", help="print one shell command per run only")
    parser.add_argument("--python", default=sys.executable, help="interpreter of the runs")
    parser.add_argument("--no_check", action="store_true", help="skip parsing the overrides here")
    known, extra = parser.parse_known_args(args)
    runs = commands(known.config, known.workdir, expand(known.grid), extra, known.python)
    if not known.no_check:
        for _, _, argv in runs:
            check(argv)
    if known.print:
        print("\n".join(shlex.join(argv) for _, _, argv in runs))
        return 0
    failed = 0
    for i, (name, run_dir, argv) in enumerate(runs, 1):
        print(f"[{i}/{len(runs)}] {name}: {shlex.join(argv)}", flush=True)
        if known.dry_run:
            continue
        code = run_logged(argv, os.path.join(run_dir, "run.log"))
        if code:
            failed += 1
            print(f"  failed with exit code {code}; see {run_dir}/run.log", flush=True)
    print(f"{len(runs) - failed}/{len(runs)} runs {'planned' if known.dry_run else 'succeeded'}")
    return failed


if __name__ == "__main__":
    sys.exit(main())
