"""`python -m flowrl_jax.compare` in reduced form: one seed, two algorithms, a few steps. Its results
come from each run's own evaluation files, and a rerun retrains nothing."""

import json
import os

import jobs
import pytest

from flowrl_jax.evaluation import answers, metrics

REDUCED = (
    "--seeds=0",
    "--algorithms=flowrl,grpo",
    "--config.sft.steps=4",
    "--config.sft.optimizer.warmup_steps=2",
    "--config.train.steps=2",
    "--config.eval.k=4",
    "--config.eval.pass_k=1,4",
    "--config.eval.problems=4",
)


def compare_cli(*args):
    return jobs.module_cli("flowrl_jax.compare", *args)


def read(path):
    with open(path) as f:
        return json.load(f)


def test_reduced_comparison(tmp_path):
    out = compare_cli(f"--workdir={tmp_path}", *REDUCED)
    assert out.returncode == 0, out.stderr[-3000:]
    files = set(os.listdir(tmp_path))
    assert {"results.json", "results.md", "results_passk.png", "results_reward.png"} <= files
    assert {"results_accuracy_diversity.png", "results_answers.png"} <= files
    results = read(tmp_path / "results.json")
    assert set(results["runs"]) == {"warmup", "flowrl", "grpo"}
    warm = read(tmp_path / "seed_0" / "warmup" / "eval" / "answers.json")
    for name, seeds in results["runs"].items():
        cell = seeds["0"]
        run = tmp_path / cell["workdir"]
        summary = read(tmp_path / cell["evaluation"])["countdown"]
        assert cell["mean_at_k"] == summary["mean@4"] and cell["pass_at_k"] == summary["pass@4"]
        assert cell["distinct_correct"] == summary["correct_answers"]
        problems = read(str(tmp_path / cell["evaluation"]).replace(".json", ".problems.json"))
        rows = problems["datasets"]["countdown"]["problems"]
        counts = [(len(r["responses"]), sum(x["correct"] for x in r["responses"])) for r in rows]
        assert cell["pass_curve"] == metrics.pass_at_k_curve(counts, 4)
        exact = read(run / "eval" / "answers.json")
        tv = [answers.distances(p, q)["tv"] for p, q in zip(exact["logp"], warm["logp"])]
        assert cell["tv"] == pytest.approx(sum(tv) / len(tv))
        if name == "warmup":
            assert cell["tv"] == 0
        else:
            assert cell["tv"] > 0  # two RL steps moved the policy
    assert results["runs"]["flowrl"]["0"]["mass"] > 0
    # One warm-up; each algorithm loaded it instead of training its own.
    assert out.stderr.count("SFT: training") == 1
    assert out.stderr.count("SFT: finished already") == 2
    assert "| flowrl |" in (tmp_path / "results.md").read_text()

    again = compare_cli(f"--workdir={tmp_path}", *REDUCED)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "SFT: training" not in again.stderr and "RL step" not in again.stderr
    assert again.stderr.count("finished already") == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (("--algorithms=flowrl,bogus",), "unknown ['bogus']"),
        (("--seeds=",), "--seeds='': give at least one"),
    ],
)
def test_bad_comparisons(tmp_path, args, message):
    out = compare_cli(f"--workdir={tmp_path}", *args)
    assert out.returncode == 2 and message in out.stderr, out.stderr[-2000:]
