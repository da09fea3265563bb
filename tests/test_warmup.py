"""The SFT warm-up as a phase of the run (issue #19): a run killed with SIGKILL during SFT, and again
during RL, resumes to the same per-step metrics as an uninterrupted run (CPU, fp32, bit for bit);
the default job runs in reduced form through the real entry point and writes its report from the
evaluation files; bad demonstration files fail before anything compiles, naming the file and line."""

import contextlib
import io
import json
import os
import signal

import jobs
import pytest

from benchmarks import default_job
from flowrl_jax.config import get_config

TIMING = ("time/", "perf/", "rollout/tokens_per_s", "train/tokens_per_s", "sft/tokens_per_s")
WARMUP = (
    "--config.task.name=countdown",
    "--config.sft.steps=8",
    "--config.sft.batch_size=8",
    "--config.sft.checkpoint_every=2",
    "--config.sft.optimizer.learning_rate=1e-3",
    "--config.sft.optimizer.warmup_steps=2",
    "--config.train.steps=4",
    "--config.checkpoint.every=1",
)


def finish(proc) -> str:
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out[-3000:]
    return out


def metrics(path) -> list[dict]:
    with open(path) as f:
        rows = [json.loads(line) for line in f]
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in rows]


def kill_at(workdir, line: str) -> None:
    job = jobs.start(workdir, *WARMUP)
    jobs.read_until(job, line)
    job.send_signal(signal.SIGKILL)
    job.wait()


@pytest.mark.slow  # about 4 minutes on 2 cores; run with -m slow
def test_killed_during_sft_and_during_rl_resumes_exactly(tmp_path):
    plain, broken = str(tmp_path / "plain"), str(tmp_path / "broken")
    out = finish(jobs.start(plain, *WARMUP))
    assert "SFT warm-up: steps 1-8 of 8" in out, out[-2000:]

    kill_at(broken, "step 5/8 [")  # SFT's step 5: checkpoints of step 2 (and maybe 4) exist
    saved = [int(d) for d in os.listdir(os.path.join(broken, "sft", "checkpoints")) if d.isdigit()]
    assert max(saved) in (2, 4) and not os.path.exists(os.path.join(broken, "checkpoints"))
    job = jobs.start(broken, *WARMUP)
    out = jobs.read_until(job, f"SFT: resuming after step {max(saved)} of 8")
    out += jobs.read_until(job, "step 3/4 [")  # RL's step 3: RL checkpoints 1, 2 exist
    job.send_signal(signal.SIGKILL)
    job.wait()
    sft_rows = metrics(os.path.join(broken, "sft", "metrics.jsonl"))

    out = finish(jobs.start(broken, *WARMUP))  # RL resumes; the warm-up is loaded, not redone
    assert "resuming after RL step" in out and "SFT: resuming" not in out, out[-2000:]
    assert "SFT warm-up: loaded of 8" in out
    assert metrics(os.path.join(broken, "sft", "metrics.jsonl")) == sft_rows

    a = metrics(os.path.join(plain, "sft", "metrics.jsonl"))
    assert [r["step"] for r in a] == list(range(1, 9)) and a == sft_rows
    assert a[-1]["sft/loss"] < a[0]["sft/loss"]
    a, b = (
        metrics(os.path.join(plain, "metrics.jsonl")),
        metrics(os.path.join(broken, "metrics.jsonl")),
    )
    assert [r["step"] for r in b] == [1, 2, 3, 4] and a == b  # FlowRL against the warm-up model


def test_the_default_job_in_reduced_form(tmp_path):
    """`python -m flowrl_jax.train` with its embedded default config (the countdown job), scaled
    down: its workdir holds both phases' checkpoints and logs, the report and the plots, and
    report.json's figures are those of the evaluation files the run wrote."""
    out = jobs.train_cli(
        f"--workdir={tmp_path}",
        "--config.sft.steps=4",
        "--config.sft.optimizer.warmup_steps=2",
        "--config.sft.checkpoint_every=2",
        "--config.train.steps=2",
        "--config.eval.every=2",
        "--config.eval.problems=4",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| mean@16 (accuracy of a sample) |" in out.stdout, out.stdout[-2000:]
    files = set(os.listdir(tmp_path))
    assert {"report.md", "report.json", "metrics.jsonl", "report_reward.png"} <= files, files
    assert {"report_logz.png", "report_diversity.png"} <= files
    assert "4" in os.listdir(tmp_path / "sft" / "checkpoints")
    assert "2" in os.listdir(tmp_path / "checkpoints")
    for events in (tmp_path / "tensorboard", tmp_path / "sft" / "tensorboard"):
        assert any(name.startswith("events.out.tfevents") for name in os.listdir(events))
    assert len(metrics(tmp_path / "sft" / "metrics.jsonl")) == 4

    report = json.loads((tmp_path / "report.json").read_text())
    assert report["k"] == 16 and report["test_problems"] == 4 and report["rl_steps"] == 2
    assert 0 < report["wall_seconds"] < 900
    for side, name in (("before", "before"), ("after", "step_2")):
        summary = json.loads((tmp_path / "eval" / f"{name}.json").read_text())["countdown"]
        problems = json.loads((tmp_path / "eval" / f"{name}.problems.json").read_text())
        rows = problems["datasets"]["countdown"]["problems"]
        assert report[side] == {
            "mean_at_k": summary["mean@16"],
            "pass_at_k": summary["pass@16"],
            "pass_at_1": summary["pass@1"],
            "distinct_correct": summary["correct_answers"],
            "coverage": summary["coverage"],
        }
        # coverage is each problem's distinct correct answers over its enumerated set
        for row in rows:
            found = {r["answer"] for r in row["responses"] if r["correct"]}
            assert row["coverage"] == len(found & set(row["gold"])) / len(row["gold"])
    assert (tmp_path / "report.md").read_text().count("|") > 10

    # BENCHMARKS.md's tuning table row: the run's settings and figures, from its files.
    capture = io.StringIO()
    with contextlib.redirect_stdout(capture):
        default_job.tuning([str(tmp_path)])
    row = capture.getvalue().splitlines()[2].split(" | ")
    job = get_config()  # the settings the reduced run did not override
    opt, beta = job.optimizer, job.algorithm.flowrl.beta
    lr = f"{opt.learning_rate:g}" + (
        f" {opt.schedule} to {opt.min_lr_ratio:g}x" if opt.schedule != "constant" else ""
    )
    group = f"{job.train.prompts_per_step} x {job.rollout.n}"
    assert row[1:7] == [f"4 x {job.sft.batch_size}", "2", group, lr, f"{beta:g}", "4"], row
    assert row[7:9] == [
        f"{report['before']['mean_at_k']:.3f}",
        f"{report['after']['mean_at_k']:.3f}",
    ]


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"prompt": "1 + 1?"}], r"sft.jsonl:1: missing field 'response'"),
        ([{"prompt": "1?", "response": "1"}, {"prompt": "1 + 1?", "response": ""}], "sft.jsonl:2:"),
        (None, "sft.jsonl: no such file"),
    ],
    ids=["missing-response", "empty-response", "no-file"],
)
def test_bad_demonstrations_fail_before_anything_compiles(tmp_path, rows, message):
    path = tmp_path / "sft.jsonl"
    if rows is not None:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = jobs.train_cli(
        "--config=flowrl_jax/config.py:base",
        f"--workdir={tmp_path / 'run'}",
        "--config.sft.steps=2",
        f"--config.sft.path={path}",
        timeout=300,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert message in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "compil" not in out.stderr.lower()  # nothing was built or compiled
    assert not os.path.exists(tmp_path / "run" / "sft")


def test_sft_alone_on_a_users_file_then_export(tmp_path):
    """SFT only (train.steps=0) on a demonstrations file, then `python -m flowrl_jax.export --sft`:
    the exported HF directory holds exactly the warm-up's last checkpoint."""
    import jax
    import numpy as np
    import orbax.checkpoint as ocp

    from flowrl_jax.export import main as export_main
    from flowrl_jax.models import load_hf

    path = tmp_path / "demos.jsonl"
    rows = [{"q": f"{a} + {b}?", "a": str(a + b)} for a in range(4) for b in range(4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    workdir = str(tmp_path / "run")
    job = jobs.start(
        workdir,
        "--config.sft.steps=6",
        "--config.sft.batch_size=8",
        "--config.sft.optimizer.warmup_steps=2",
        "--config.sft.optimizer.learning_rate=3e-3",
        f"--config.sft.path={path}",
        "--config.sft.fields.prompt=q",
        "--config.sft.fields.response=a",
        "--config.train.steps=0",
    )
    out = finish(job)
    assert "SFT warm-up: steps 1-6 of 6" in out and "no RL steps (train.steps=0)" in out, out[
        -2000:
    ]
    assert not os.path.exists(os.path.join(workdir, "checkpoints"))
    losses = [r["sft/loss"] for r in metrics(os.path.join(workdir, "sft", "metrics.jsonl"))]
    assert len(losses) == 6 and losses[-1] < losses[0]

    export_main(["--workdir", workdir, "--sft"])
    exported = load_hf(os.path.join(workdir, "export", "sft_step_6"))
    with ocp.CheckpointManager(os.path.join(workdir, "sft", "checkpoints")) as manager:
        state = manager.restore(6, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    policy = state["state"]["params"]["policy"]
    for (p, x), y in zip(
        jax.tree_util.tree_leaves_with_path(policy), jax.tree.leaves(exported.params)
    ):
        np.testing.assert_array_equal(np.asarray(y), np.asarray(x), err_msg=str(p))
