"""The default job's figures for BENCHMARKS.md, read from a finished run's workdir (nothing typed by
hand): the machine, the date, the command, the wall time and the before / after table the run wrote.

    python -m flowrl_jax.train --workdir=runs/countdown        # the default job (the full run)
    python -m benchmarks.default_job --workdir=runs/countdown [--command="..."] >> BENCHMARKS.md
    python -m benchmarks.default_job --tuning RUN_DIR [RUN_DIR ...] >> BENCHMARKS.md
    python -m flowrl_jax.evaluate --workdir=runs/countdown --out=runs/countdown/eval/cli
    python -m benchmarks.default_job --workdir=runs/countdown --reevaluated=runs/countdown/eval/cli.json

Last line: `mean_at_k_gain=<points> distinct_correct_gain=<x> wall_minutes=<m>`. With --tuning: a
table of tuning runs of the job (each one's settings from its config.json, its figures from its
report.json), last line the best gain and its run. With --reevaluated: the evaluate CLI's figures
of the run's last checkpoint against the run's own last evaluation, figure by figure, last line
`cli_equals_report=<True|False>`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time

from flowrl_jax.evaluation.report import describe_machine


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/countdown")
    parser.add_argument("--command", default="python -m flowrl_jax.train")
    parser.add_argument("--note", default="")
    parser.add_argument(
        "--plots",
        default="default_job",
        help="the plots' name in benchmarks/results/: <NAME>_*.png",
    )
    parser.add_argument("--tuning", nargs="+", default=None, help="run directories to tabulate")
    parser.add_argument("--reevaluated", help="the evaluate CLI's <out>.json of the run")
    args = parser.parse_args(argv)
    if args.tuning:
        return tuning(args.tuning)
    if args.reevaluated:
        return reevaluated(args.workdir, args.reevaluated)
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
            shutil.copy(src, os.path.join(plots, f"{args.plots}_" + name.removeprefix("report_")))
    gain = 100 * (report["after"]["mean_at_k"] - report["before"]["mean_at_k"])
    distinct = report["after"]["distinct_correct"] - report["before"]["distinct_correct"]
    print(f"### {when}: the default job, full run")
    print()
    print(f"Machine: {describe_machine(report.get('machine'))}. Command: `{args.command}`.")
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
        f"(target < 10). Plots: {plots}/{args.plots}_*.png."
    )
    print()
    print(
        f"mean_at_k_gain={gain:.1f} distinct_correct_gain={distinct:.2f} "
        f"wall_minutes={report['wall_seconds'] / 60:.1f}"
    )


def tuning(workdirs: list[str]) -> None:
    """One row per run: what differs between tuning runs, and the before / after figures."""
    print(
        "| run | SFT steps x batch | RL steps | prompts x samples | RL lr | beta | test problems "
        "| mean@k before | after | gain (points) | distinct correct before | after | wall (min) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    best = None
    for workdir in workdirs:
        with open(os.path.join(workdir, "config.json")) as f:
            c = json.load(f)
        with open(os.path.join(workdir, "report.json")) as f:
            r = json.load(f)
        b, a = r["before"], r["after"]
        opt = c["optimizer"]
        lr = f"{opt['learning_rate']:g}"
        if opt.get("schedule", "constant") != "constant":  # e.g. "0.0002 cosine to 0.25x"
            lr += f" {opt['schedule']} to {opt['min_lr_ratio']:g}x"
        gain = 100 * (a["mean_at_k"] - b["mean_at_k"])
        print(
            f"| {os.path.basename(workdir.rstrip('/'))} | {c['sft']['steps']} x "
            f"{c['sft']['batch_size']} | {c['train']['steps']} | "
            f"{c['train']['prompts_per_step']} x {c['rollout']['n']} | "
            f"{lr} | {c['algorithm']['flowrl']['beta']:g} | "
            f"{r['test_problems']} | {b['mean_at_k']:.3f} | {a['mean_at_k']:.3f} | {gain:+.1f} | "
            f"{b['distinct_correct']:.3f} | {a['distinct_correct']:.3f} | "
            f"{r['wall_seconds'] / 60:.1f} |"
        )
        if best is None or gain > best[0]:
            best = (gain, os.path.basename(workdir.rstrip("/")))
    print()
    print(f"best_gain={best[0]:.1f} run={best[1]}")


def reevaluated(workdir: str, path: str) -> bool:
    """The CLI's evaluation (`path`) against the run's own last one (report.json's source), every
    figure of the dataset; -> whether all are equal."""
    with open(os.path.join(workdir, "report.json")) as f:
        report = json.load(f)
    with open(os.path.join(workdir, report["sources"]["after"])) as f:
        run = json.load(f)[report["dataset"]]
    with open(path) as f:
        cli = json.load(f)[report["dataset"]]
    print(f"| figure | the run's evaluation ({report['sources']['after']}) | the CLI's ({path}) |")
    print("|---|---|---|")
    for key in sorted(set(run) | set(cli)):
        print(f"| {key} | {run.get(key)} | {cli.get(key)} |")
    same = run == cli
    print()
    print(f"cli_equals_report={same}")
    return same


if __name__ == "__main__":
    main()
