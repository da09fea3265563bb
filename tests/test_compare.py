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


@pytest.mark.slow  # minutes: CI runs the comparison end to end in the test after it
def test_reduced_comparison(tmp_path):
    doc = tmp_path / "docs" / "RESULTS.md"
    out = compare_cli(f"--workdir={tmp_path}", f"--results_doc={doc}", *REDUCED)
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
    # FlowRL's distance to its own target, from the log Z its run wrote; no target elsewhere.
    flow = read(tmp_path / "seed_0" / "flowrl" / "eval" / "answers.json")["flowrl"]
    assert len(flow["logz"]) == 4 and flow["beta"] == 5.0
    assert results["runs"]["flowrl"]["0"]["tv_target"] > 0
    assert "tv_target" not in results["runs"]["grpo"]["0"]
    # One warm-up; each algorithm loaded it instead of training its own.
    assert out.stderr.count("SFT: training") == 1
    assert out.stderr.count("SFT: finished already") == 2
    assert "| flowrl |" in (tmp_path / "results.md").read_text()

    # The document: the run's own table, plots and figures, how it ran, and room for a reading.
    text = doc.read_text()
    table = (tmp_path / "results.md").read_text().split("\n", 1)[1].strip()
    assert table in text and "python -m flowrl_jax.compare" in text and "jax " in text
    # What ran, and where, as the run recorded it: two algorithms, 8 CPU devices, fp32.
    assert text.startswith("# Results: FlowRL against GRPO\n")
    machine = results["machine"]
    assert (machine["backend"], machine["devices"], machine["dtype"]) == ("cpu", 8, "float32")
    assert "8 cpu devices (JAX backend cpu) in 1 process; compute float32" in text
    copied = set(os.listdir(tmp_path / "docs" / "results"))
    assert {"results.json", "results_passk.png", "results_answers.png"} <= copied
    assert "![results_passk.png](results/results_passk.png)" in text
    timing = read(tmp_path / "timing.json")
    assert set(timing) == {"seed_0/warmup", "seed_0/flowrl", "seed_0/grpo"}
    assert f"{sum(timing.values()) / 60:.1f} min in all" in text
    doc.write_text(text.replace("(not written yet)", "FlowRL won nothing here."))

    again = compare_cli(f"--workdir={tmp_path}", f"--results_doc={doc}", *REDUCED)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "SFT: training" not in again.stderr and "RL step" not in again.stderr
    assert again.stderr.count("finished already") == 2
    assert read(tmp_path / "timing.json") == timing  # finished runs keep the time they took
    assert doc.read_text().rstrip().endswith("## Reading\n\nFlowRL won nothing here.")


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


@pytest.mark.slow  # minutes: a warm-up and two runs; the comparison's main path is in CI above
def test_a_task_without_enumerated_answers_gets_the_other_metrics(tmp_path):
    """The digits task lists no correct answers: the comparison says so, leaves the exact measures
    out and computes the sampled ones."""
    demos = tmp_path / "demos.jsonl"
    demos.write_text(
        "".join(
            json.dumps({"prompt": f"What is {a} + 1?", "response": "12"}) + "\n" for a in range(8)
        )
    )
    out = compare_cli(
        f"--workdir={tmp_path / 'cmp'}",
        "--seeds=0",
        "--algorithms=grpo",
        "--config.task.name=digits",
        f"--config.sft.path={demos}",
        *REDUCED[2:],
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "does not enumerate its correct answers" in out.stderr
    results = read(tmp_path / "cmp" / "results.json")
    for name in ("warmup", "grpo"):
        cell = results["runs"][name]["0"]
        assert cell["mean_at_k"] is not None and len(cell["pass_curve"]) == 4
        assert "tv" not in cell and "mass" not in cell
    assert "| grpo |" in (tmp_path / "cmp" / "results.md").read_text()


@pytest.mark.slow  # minutes: a warm-up and a run
def test_a_lora_comparison(tmp_path):
    """--config.lora.rank: each algorithm trains adapters on the (full) warm-up model, and its
    evaluation runs the adapted policy."""
    # FlowRL: its loss has a gradient even where every reward of a group is 0 (GRPO's has none,
    # and B = 0 adapters take no weight decay). At the job's rate two steps move B by ~1e-4,
    # below what the exact measures resolve: a rate that moves it.
    argv = ["--seeds=0", "--algorithms=flowrl", "--config.lora.rank=4", *REDUCED[2:]]
    argv.append("--config.optimizer.learning_rate=1e-2")
    out = compare_cli(f"--workdir={tmp_path}", *argv)
    assert out.returncode == 0, out.stderr[-3000:]
    results = read(tmp_path / "results.json")
    assert set(results["runs"]) == {"warmup", "flowrl"}
    assert results["runs"]["flowrl"]["0"]["tv"] > 0  # the adapters moved the policy
