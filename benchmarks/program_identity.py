"""Did a change alter the programs a run compiles? Each program of the default job and of the plain
engine config (`lower.programs`: sampler, log-probs, advantages, update, fused step, SFT's step),
as two revisions build them for the CPU, compared by the sha256 of its StableHLO without source
locations.

    python -m benchmarks.program_identity --base=REV [--new=DIR]

Identical programs compile to identical machine code: no timing can tell them apart, so a change
that leaves them identical cannot have slowed the run's device work. Prints one row per program
(both hashes, same / DIFF); the last line reads `programs_identical=<same>/<total>`.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys

from benchmarks import worktree


def hashes() -> dict[str, str]:
    """Run at one tree: {"<config> <program>": sha256 prefix} of the programs it builds."""
    import jax

    from flowrl_jax import lower
    from flowrl_jax import mesh as mesh_lib
    from flowrl_jax.config import base_config, get_config

    out = {}
    for name, config in (("job", get_config()), ("base", base_config())):
        mesh = mesh_lib.make_mesh(dict(config.mesh), jax.devices()[:1])
        cfg, tokenizer = lower.model_and_tokenizer(config)
        reward = lower.compiled_reward(config, tokenizer)
        with jax.set_mesh(mesh):
            for program in lower.programs(config, cfg, mesh, "cpu", reward):
                text = program.fn.lower(*program.args).as_text(debug_info=False)
                out[f"{name} {program.name}"] = hashlib.sha256(text.encode()).hexdigest()[:16]
    return out


def at(tree: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=tree, JAX_PLATFORMS="cpu")
    argv = [sys.executable, os.path.abspath(__file__), "--print"]
    run = subprocess.run(argv, cwd=tree, env=env, capture_output=True, text=True)
    if run.returncode:
        raise RuntimeError(f"hashing the programs at {tree} failed:\n{run.stderr[-3000:]}")
    return dict(line.rsplit(" ", 1) for line in run.stdout.splitlines() if line.strip())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", help="the git revision to compare against")
    parser.add_argument("--new", default=".", help="the source tree of the new side")
    parser.add_argument("--print", action="store_true", help=argparse.SUPPRESS)  # at one tree
    args = parser.parse_args(argv)
    if args.print:
        for key, digest in hashes().items():
            print(key, digest)
        return 0
    if not args.base:
        parser.error("--base is required")
    new_tree = os.path.abspath(args.new)
    with worktree(new_tree, args.base) as base_tree:
        base, new = at(base_tree), at(new_tree)
    same = 0
    print(f"{'program':<22} {'base':<17} {'new':<17}")
    for key in sorted(set(base) | set(new)):
        b, n = base.get(key, "-"), new.get(key, "-")
        same += b == n
        print(f"{key:<22} {b:<17} {n:<17} {'same' if b == n else 'DIFF'}")
    print(f"programs_identical={same}/{len(set(base) | set(new))}")
    return 0


if __name__ == "__main__":
    main()
