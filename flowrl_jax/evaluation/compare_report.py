"""The comparison's results, read from the files its runs wrote (nothing is recomputed from a model):

    eval/before.json | eval/step_<N>.json           the sampled evaluation's summary
    eval/before.problems.json | step_<N>.problems.json   every sample's verdict: the pass@k curve
    eval/answers.json                               the exact log-probs of every correct answer
    metrics.jsonl                                   the training curves

-> <out>/results.json (per run and mean / std over seeds), results.md, results_passk.png,
results_accuracy_diversity.png, results_reward.png, results_answers.png.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np

from flowrl_jax import storage
from flowrl_jax.evaluation import answers, metrics, report

log = logging.getLogger("flowrl_jax")

COLUMNS = (
    "mean_at_k",
    "pass_at_1",
    "pass_at_k",
    "distinct_correct",
    "coverage",
    "mass",
    "tv",
    "kl",
    "answer_entropy",
    "tv_target",
)


def _read(path: str):
    with open(path) as f:
        return json.load(f)


def run_figures(workdir: str, name: str, k: int, ref: dict | None) -> dict:
    """One run's figures from its files; `name` is its evaluation's file name (before, step_N)."""
    summary = next(iter(_read(os.path.join(workdir, "eval", f"{name}.json")).values()))
    problems = next(
        iter(_read(os.path.join(workdir, "eval", f"{name}.problems.json"))["datasets"].values())
    )
    counts = [
        (len(p["responses"]), sum(r["correct"] for r in p["responses"]))
        for p in problems["problems"]
    ]
    lengths = [len(r["text"]) for p in problems["problems"] for r in p["responses"]]
    out = {
        "mean_at_k": summary[f"mean@{k}"],
        "pass_at_1": summary["pass@1"],
        "pass_at_k": summary[f"pass@{k}"],
        "distinct_correct": summary["correct_answers"],
        "coverage": summary.get("coverage"),
        "response_chars": float(np.mean(lengths)),
        "pass_curve": metrics.pass_at_k_curve(counts, k),
        "problems": len(counts),
    }
    exact_path = os.path.join(workdir, "eval", "answers.json")
    exact = _read(exact_path) if os.path.exists(exact_path) else {"logp": None}
    if exact["logp"] is not None:
        refs = ref["logp"] if ref is not None else exact["logp"]
        per = [answers.distances(p, q) for p, q in zip(exact["logp"], refs)]
        out |= {
            key: float(np.mean([d[key] for d in per])) for key in ("mass", "tv", "kl", "kl_back")
        }
        out["answer_entropy"] = float(np.mean([d["entropy"] for d in per]))
        if exact.get("flowrl") and ref is not None:
            out |= target_distances(exact, ref, counts)
    curve = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(curve):
        with open(curve) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        out["reward_curve"] = [r.get("reward/mean") for r in rows]
        out["entropy_curve"] = [r.get("entropy") for r in rows]  # token entropy of rollouts
        out["length_curve"] = [r.get("response/length_mean") for r in rows]
        if rows:
            out["token_entropy"] = rows[-1].get("entropy")
    return out


def target_distances(exact: dict, ref: dict, counts: list) -> dict:
    """A FlowRL run's distance to its own fixed point among each problem's correct answers,
    p*(y) ∝ π_ref(y)·exp(ℓ(y)·(β·r̂ − log Z)) (evaluation/answers.py), with its log Z on the
    problem, ℓ(y) = |y| under length normalisation (else 1), and r̂ the score a correct answer
    expects at the policy's sampled success rate on the problem (counts: (samples, correct))."""
    f = exact["flowrl"]
    if len(counts) != len(exact["logp"]):
        raise ValueError(
            f"the sampled evaluation has {len(counts)} problems, answers.json {len(exact['logp'])}"
        )
    tv, kl = [], []
    for i, (total, correct) in enumerate(counts):
        score = 1.0  # raw 0/1 rewards
        if f["reward_normalization"] == "group":
            score = answers.correct_score(correct / total, f["group_size"])
        c = f["beta"] * score - f["logz"][i]
        lengths = exact["lengths"][i] if f["length_normalize"] else np.ones(len(exact["logp"][i]))
        target = answers.length_target(ref["logp"][i], lengths, c)
        d = answers.distances(exact["logp"][i], np.log(target))
        tv.append(d["tv"])
        kl.append(d["kl"])
    return {"tv_target": float(np.mean(tv)), "kl_target": float(np.mean(kl))}


def write(out: str, runs: dict, steps: int, k: int, machine: dict | None = None) -> dict:
    """runs: (seed, name) -> workdir, with name 'warmup' for each seed's warm-up. machine: what
    the comparison ran on (report.machine)."""
    per_run = {}
    for (seed, name), workdir in runs.items():
        ref = _read(os.path.join(runs[(seed, "warmup")], "eval", "answers.json"))
        ref = ref if ref["logp"] is not None else None
        file = "before" if name == "warmup" else f"step_{steps}"
        per_run.setdefault(name, {})[str(seed)] = run_figures(workdir, file, k, ref) | {
            "workdir": os.path.relpath(workdir, out),
            "evaluation": os.path.join(os.path.relpath(workdir, out), "eval", f"{file}.json"),
        }
    aggregate = {}
    for name, seeds in per_run.items():
        aggregate[name] = {}
        for col in COLUMNS + ("kl_back", "kl_target", "response_chars", "token_entropy"):
            values = [s[col] for s in seeds.values() if s.get(col) is not None]
            if values:
                aggregate[name][col] = {
                    "mean": float(np.mean(values)),
                    "std": float(np.std(values)),
                }
    results = {"k": k, "rl_steps": steps, "runs": per_run, "aggregate": aggregate}
    results["machine"] = machine
    report.write_json(results, os.path.join(out, "results.json"))
    storage.write_atomic(os.path.join(out, "results.md"), markdown(results))
    try:
        plots(out, results)
    except Exception as e:  # noqa: BLE001 -- a plot must not lose the results written above
        log.warning("compare: plots not drawn: %s", e)
    return results


def markdown(results: dict) -> str:
    k = results["k"]
    heads = {
        "mean_at_k": f"mean@{k}",
        "pass_at_1": "pass@1",
        "pass_at_k": f"pass@{k}",
        "distinct_correct": "distinct correct",
        "coverage": "coverage",
        "mass": "mass on correct set",
        "tv": "TV to π_ref",
        "kl": "KL(π_ref‖π)",
        "answer_entropy": "entropy among correct",
        "tv_target": "TV to FlowRL's target",
    }
    lines = [
        f"# Comparison: {results['rl_steps']} RL steps from each seed's warm-up, K = {k}",
        "",
        "Mean ± std over seeds "
        + f"({len(next(iter(results['runs'].values())))} seeds). Distances are between the "
        "policy's and the warm-up model's distributions among each problem's correct answers "
        "(teacher-forced, exact), averaged over problems; the last column is a FlowRL run's "
        "distance to its own fixed point, π_ref reweighted by exp(|y|·(β·r̂ − log Z)) with its "
        "log Z (evaluation/compare_report.py: target_distances).",
        "",
        "| run | " + " | ".join(heads.values()) + " |",
        "|---|" + "---|" * len(heads),
    ]
    for name, figures in results["aggregate"].items():
        cells = []
        for col in heads:
            f = figures.get(col)
            cells.append("" if f is None else f"{f['mean']:.3f} ± {f['std']:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plots(out: str, results: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    runs = results["runs"]

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, seeds in runs.items():
        curve = np.mean([s["pass_curve"] for s in seeds.values()], axis=0)
        ax.plot(np.arange(1, len(curve) + 1), curve, label=name)
    ax.set_xscale("log", base=2)
    ax.set(xlabel="k", ylabel="pass@k (test problems)", title="pass@k, mean over seeds")
    ax.legend(fontsize=7)
    paths.append(_save(fig, out, "results_passk.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, seeds in runs.items():
        xs = [s["mean_at_k"] for s in seeds.values()]
        ys = [s["distinct_correct"] for s in seeds.values()]
        ax.scatter(xs, ys, label=name, s=18)
    ax.set(xlabel=f"mean@{results['k']}", ylabel="distinct correct answers per problem")
    ax.set_title("accuracy against diversity (one point per run)")
    ax.legend(fontsize=7)
    paths.append(_save(fig, out, "results_accuracy_diversity.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, seeds in runs.items():
        curves = [s["reward_curve"] for s in seeds.values() if s.get("reward_curve")]
        if not curves or name == "warmup":
            continue
        n = min(map(len, curves))
        c = np.asarray([x[:n] for x in curves], np.float64)
        w = max(1, n // 20)  # a moving average, so the seeds' bands are readable
        smooth = np.stack([np.convolve(x, np.ones(w) / w, mode="valid") for x in c])
        steps = np.arange(1, smooth.shape[1] + 1) + w - 1
        ax.plot(steps, smooth.mean(0), label=name)
        ax.fill_between(steps, smooth.min(0), smooth.max(0), alpha=0.2)
    ax.set(xlabel="RL step", ylabel="training reward (moving mean)", title="reward, seed bands")
    ax.legend(fontsize=7)
    paths.append(_save(fig, out, "results_reward.png"))
    paths.append(_answer_bars(out, results))
    return paths


def _answer_bars(out: str, results: dict, problems: int = 3) -> str:
    """For the first seed's first few evaluated problems with several correct answers: each run's
    distribution among them (teacher-forced, normalised), π_ref (the warm-up) first."""
    import matplotlib.pyplot as plt

    seed = next(iter(results["runs"]["warmup"]))
    exact = {
        name: _read(os.path.join(out, seeds[seed]["workdir"], "eval", "answers.json"))
        for name, seeds in results["runs"].items()
        if seed in seeds
    }
    ref = exact["warmup"]
    if ref["logp"] is None:
        return ""
    shown = [i for i, a in enumerate(ref["answers"]) if len(a) >= 3][:problems]
    fig, axes = plt.subplots(len(shown), 1, figsize=(8, 2.6 * len(shown)), squeeze=False)
    names = list(exact)
    for ax, i in zip(axes[:, 0], shown):
        labels = ref["answers"][i]
        width = 0.8 / len(names)
        for j, name in enumerate(names):
            p = answers.normalise(exact[name]["logp"][i])
            ax.bar(np.arange(len(labels)) + j * width, p, width, label=name)
        ax.set_xticks(np.arange(len(labels)) + 0.4 - width / 2, labels, fontsize=6, rotation=45)
        ax.set_ylabel("share among correct")
        ax.set_title(f"test row {ref['rows'][i]} (seed {seed})", fontsize=8)
    axes[0, 0].legend(fontsize=6, ncol=4)
    return _save(fig, out, "results_answers.png")


def _save(fig, out: str, name: str) -> str:
    path = os.path.join(out, name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
