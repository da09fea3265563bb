"""The default job's report: the evaluation before RL against the last one, read from the files the
run wrote (`<workdir>/eval/before.json`, `<workdir>/eval/step_<N>.json`) and the training curves of
`<workdir>/metrics.jsonl`; nothing is recomputed.

    <workdir>/report.json   {"before": {...}, "after": {...}, "k", "test_problems", "wall_seconds",
                            "rl_steps", "dataset", "sources"}; before / after hold mean_at_k,
                            pass_at_k, pass_at_1, distinct_correct, coverage
    <workdir>/report.md     the same as a before / after table
    <workdir>/report_reward.png, report_logz.png, report_diversity.png   the curves over RL steps
"""

from __future__ import annotations

import json
import logging
import os
import time

from flowrl_jax import storage
from flowrl_jax.evaluation import report

log = logging.getLogger("flowrl_jax")

FIGURES = ("mean_at_k", "pass_at_k", "pass_at_1", "distinct_correct", "coverage")


def check(eval_cfg, k_in_pass_k: bool) -> None:
    """eval.report needs an evaluation before RL, one at the end, and pass@k itself."""
    if not eval_cfg.report:
        return
    if not eval_cfg.before or not eval_cfg.every:
        raise ValueError(
            "eval.report=True compares the evaluation before RL with the last one: it needs "
            f"eval.before=True and eval.every > 0 (given {eval_cfg.before}, {eval_cfg.every})"
        )
    if not k_in_pass_k:
        raise ValueError(
            f"eval.report=True reports pass@k at k=eval.k={eval_cfg.k}: add it to "
            f"eval.pass_k={eval_cfg.pass_k!r}"
        )


def _figures(summary: dict, k: int) -> dict:
    missing = [m for m in (f"mean@{k}", f"pass@{k}", "correct_answers") if m not in summary]
    if missing:
        raise KeyError(f"the evaluation has no {missing} (k={k})")
    return {
        "mean_at_k": summary[f"mean@{k}"],
        "pass_at_k": summary[f"pass@{k}"],
        "pass_at_1": summary.get("pass@1"),
        "distinct_correct": summary["correct_answers"],
        "coverage": summary.get("coverage"),
    }


def write(
    workdir: str, k: int, last_step: int, wall_seconds: float, resumed: bool, machine: dict
) -> dict:
    """report.json, report.md and the PNGs of `workdir`. machine: what the run ran on
    (report.machine). -> the report."""
    sources = {
        "before": os.path.join("eval", "before.json"),
        "after": os.path.join("eval", f"step_{last_step}.json"),
    }
    evaluations = {}
    for side, path in sources.items():
        evaluations[side] = json.loads(storage.read_text(os.path.join(workdir, path)))
    dataset = next(iter(evaluations["after"]))
    out = {side: _figures(evaluations[side][dataset], k) for side in ("before", "after")} | {
        "k": k,
        "test_problems": int(evaluations["after"][dataset]["problems"]),
        "dataset": dataset,
        "rl_steps": last_step,
        "wall_seconds": wall_seconds,
        "resumed": resumed,
        "machine": machine,
        "sources": sources,
    }
    report.write_json(out, os.path.join(workdir, "report.json"))
    storage.write_atomic(os.path.join(workdir, "report.md"), markdown(out))
    plots(workdir)
    return out


def markdown(out: dict) -> str:
    k = out["k"]
    names = {
        "mean_at_k": f"mean@{k} (accuracy of a sample)",
        "pass_at_k": f"pass@{k}",
        "pass_at_1": "pass@1",
        "distinct_correct": "distinct correct answers per problem",
        "coverage": "coverage of each problem's correct answers",
    }
    rows = []
    for key in FIGURES:
        b, a = out["before"][key], out["after"][key]
        if b is None or a is None:
            continue
        rows.append({"metric": names[key], "before RL": b, "after RL": a, "change": a - b})
    lines = [
        f"# {out['dataset']}: before and after {out['rl_steps']} RL steps",
        "",
        f"{out['test_problems']} test problems, k = {k} samples each at the evaluation's "
        f"settings; wall time {out['wall_seconds']:.0f} s"
        + (" (this start only: the run resumed)" if out["resumed"] else "")
        + ".",
        f"Read from {out['sources']['before']} and {out['sources']['after']}.",
        "",
        report.markdown_table(rows, ["metric", "before RL", "after RL", "change"]),
    ]
    return "\n".join(lines)


def plots(workdir: str) -> list[str]:
    """The report's PNGs from metrics.jsonl; one that cannot be drawn is a warning."""
    try:
        return _plots(workdir)
    except Exception as e:  # noqa: BLE001 -- the figures are in report.json regardless
        log.warning("report plots not drawn: %s: %s", type(e).__name__, e)
        return []


def _plots(workdir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    text = storage.read_text(os.path.join(workdir, "metrics.jsonl"))
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    before = os.path.join(workdir, "eval", "before.json")
    if storage.exists(before):  # the evaluation before RL, drawn at step 0
        summaries = json.loads(storage.read_text(before))
        rows.insert(
            0,
            {"step": 0} | {f"eval/{d}/{k}": v for d, s in summaries.items() for k, v in s.items()},
        )

    def series(key):
        got = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        return [s for s, _ in got], [v for _, v in got]

    evals = sorted({k.split("/")[1] for r in rows for k in r if k.startswith("eval/")})
    panels = {
        "report_reward.png": [
            ("training reward and accuracy", [("reward/mean", "reward"), ("accuracy", "accuracy")]),
            *[(f"test {name}", [(f"eval/{name}/{m}", m) for m in ("pass@1",)]) for name in evals],
        ],
        "report_logz.png": [
            (
                "log Z",
                [("flowrl/logz", "log Z (head)"), ("flowrl/logz_optimal", "variance-optimal")],
            )
        ],
        "report_diversity.png": [
            (f"test {name}", [(f"eval/{name}/correct_answers", "distinct correct answers")])
            for name in evals
        ]
        + [(f"test {name}", [(f"eval/{name}/coverage", "coverage")]) for name in evals],
    }
    written = []
    for file, axes_spec in panels.items():
        axes_spec = [(t, [c for c in curves if series(c[0])[0]]) for t, curves in axes_spec]
        axes_spec = [(t, curves) for t, curves in axes_spec if curves]
        if not axes_spec:
            continue
        fig, axes = plt.subplots(1, len(axes_spec), figsize=(4.2 * len(axes_spec), 3.0))
        axes = [axes] if len(axes_spec) == 1 else list(axes)
        for ax, (title, curves) in zip(axes, axes_spec):
            for key, label in curves:
                x, y = series(key)
                ax.plot(x, y, marker="." if len(x) < 30 else None, label=label)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("RL step", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = os.path.join(workdir, file)
        storage.write_figure(fig, path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def process_seconds() -> float:
    """Seconds since this process started (Linux /proc), else since this module was imported."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return time.time() - (boot + ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, StopIteration):
        return time.perf_counter() - _IMPORTED


_IMPORTED = time.perf_counter()
