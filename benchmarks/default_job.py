"""The default job's figures for BENCHMARKS.md, read from a finished run's workdir (nothing typed by
hand): the machine, the date, the command, the wall time and the before / after table the run wrote.

    python -m flowrl_jax.train --workdir=runs/countdown        # the default job (the full run)
    python -m benchmarks.default_job --workdir=runs/countdown [--command="..."] >> BENCHMARKS.md

Last line: `mean_at_k_gain=<points> distinct_correct_gain=<x> wall_minutes=<m>`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/countdown")
    parser.add_argument("--command", default="python -m flowrl_jax.train")
    parser.add_argument("--note", default="")
    args = parser.parse_args(argv)
    with open(os.path.join(args.workdir, "report.json")) as f:
        report = json.load(f)
    with open(os.path.join(args.workdir, "report.md")) as f:
        table = f.read().split("\n\n", 2)[-1]  # the table, after the title and the sources
    when = time.strftime(
        "%Y-%m-%d", time.localtime(os.path.getmtime(args.workdir + "/report.json"))
    )
    plots = "benchmarks/results"
    for name in ("report_reward.png", "report_logz.png", "report_diversity.png"):
        src = os.path.join(args.workdir, name)
        if os.path.exists(src):
            shutil.copy(src, os.path.join(plots, "default_job_" + name.removeprefix("report_")))
    gain = 100 * (report["after"]["mean_at_k"] - report["before"]["mean_at_k"])
    distinct = report["after"]["distinct_correct"] - report["before"]["distinct_correct"]
    print(f"### {when}: the default job, full run")
    print()
    print(
        f"Machine: {platform.node()}, {os.cpu_count()} cores, fp32 on the CPU. Command: `{args.command}`."
    )
    print(
        f"{report['test_problems']} test problems, k = {report['k']}, {report['rl_steps']} RL steps; "
        f"wall time {report['wall_seconds'] / 60:.1f} min (install excluded)."
        + (f" {args.note}" if args.note else "")
    )
    print()
    print(table.strip())
    print()
    print(
        f"mean@k gain {gain:+.1f} points (target +15), distinct correct answers "
        f"{distinct:+.2f} per problem (target >= 0), wall {report['wall_seconds'] / 60:.1f} min "
        f"(target < 10). Plots: {plots}/default_job_*.png."
    )
    print()
    print(
        f"mean_at_k_gain={gain:.1f} distinct_correct_gain={distinct:.2f} "
        f"wall_minutes={report['wall_seconds'] / 60:.1f}"
    )


if __name__ == "__main__":
    main()
