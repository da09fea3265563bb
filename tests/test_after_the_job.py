"""What a user does after the default job: export its policy and evaluate it again, from the
workdir alone. The run here is the job's own config (countdown, the SFT warm-up, the cosine
schedule, periodic evaluation and the report), shrunk to a few steps."""

import json
import os

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from flowrl_jax import evaluate, export
from flowrl_jax import mesh as mesh_lib
from flowrl_jax.config import get_config
from flowrl_jax.models import from_config
from flowrl_jax.trainer import checkpoint as checkpoint_lib
from flowrl_jax.trainer import restore
from flowrl_jax.trainer.run import train


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("countdown")
    config = get_config()  # the default job
    config.workdir = str(workdir)
    config.model.tiny_hidden_size, config.model.tiny_layers = 0, 0  # the suite's tiny shape
    config.sft.steps, config.sft.batch_size, config.sft.optimizer.warmup_steps = 4, 8, 1
    config.train.steps, config.train.prompts_per_step = 3, 4
    config.optimizer.warmup_steps = 1  # the cosine decays over steps 2-3
    config.eval.every, config.eval.problems, config.eval.k, config.eval.pass_k = 3, 6, 4, "1,4"
    config.checkpoint.every = 2
    assert config.optimizer.schedule == "cosine" and config.eval.report
    mesh = mesh_lib.make_mesh(dict(config.mesh))
    with jax.set_mesh(mesh):
        result = train(config, mesh)
    assert result.last_step == 3 and result.report is not None
    return workdir, result


def test_export_reads_a_cosine_run_and_its_warm_up(job, tmp_path):
    """The job's checkpoints export (RL's newest and the SFT warm-up's) with the workdir alone: the
    weights written are the policy the run holds, not the optimiser's rebuilt state."""
    workdir, result = job
    out = export.export(str(workdir))
    assert out == os.path.join(str(workdir), "export", "step_3")
    weights = load_file(os.path.join(out, "model.safetensors"))
    policy = result.state.params["policy"]
    embed = np.asarray(policy["embed"]["embedding"])
    np.testing.assert_array_equal(weights["model.embed_tokens.weight"], embed)
    warm = export.export(str(workdir), sft_phase=True, out=str(tmp_path / "warm"))
    sft = load_file(os.path.join(warm, "model.safetensors"))
    warm_policy = result.sft.model.params
    np.testing.assert_array_equal(
        sft["model.embed_tokens.weight"], np.asarray(warm_policy["embed"]["embedding"])
    )
    assert not np.array_equal(sft["model.embed_tokens.weight"], embed)  # RL moved it


def test_the_policy_alone_is_read_and_checked(job):
    """restore_policy gives the full restore's policy, reads a fraction of the bytes (no Adam
    moments), and still refuses a step whose policy disagrees with its fingerprint."""
    workdir, _ = job
    config = restore.run_config(str(workdir))
    mesh = mesh_lib.make_mesh(dict(config.mesh))
    like = restore.abstract_state(config, from_config.model_config(config.model)[0], mesh)
    checkpoints = checkpoint_lib.Checkpoints(str(workdir), config.checkpoint)
    try:
        read = {}
        for what in ("full", "policy"):
            before = _bytes_read()
            if what == "full":
                state, record = checkpoints.restore_latest(like)
                got = state.params["policy"]
            else:
                got, record = checkpoints.restore_policy(like)
            read[what] = _bytes_read() - before
            assert record["rl_step"] == 3
            if what == "full":
                full = got
        for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(got), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        # Adam's two moments are twice the policy: a policy-only read is well under half of it.
        assert read["policy"] < 0.5 * read["full"], read
    finally:
        checkpoints.close()


def test_a_policy_that_disagrees_with_its_fingerprint_is_skipped(job, tmp_path, caplog):
    """The policy reader checks what it reads: step 3's record is edited so that one policy
    array's saved sum is off; the reader warns, names the step, and reads step 2."""
    import shutil

    workdir, _ = job
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("export", "tensorboard"))
    config = restore.run_config(str(copy))
    mesh = mesh_lib.make_mesh(dict(config.mesh))
    like = restore.abstract_state(config, from_config.model_config(config.model)[0], mesh)
    paths = [
        jax.tree_util.keystr(p)
        for p, _ in jax.tree_util.tree_leaves_with_path(
            {"opt_state": like.opt_state, "params": like.params, "rng": 0, "step": 0}
        )
    ]
    row = paths.index("['params']['policy']['final_norm']['scale']")
    record_path = copy / "checkpoints" / "3" / "record" / "metadata"
    record = json.loads(record_path.read_text())
    record["fingerprint"][row][0] += 1.0
    record_path.write_text(json.dumps(record))
    checkpoints = checkpoint_lib.Checkpoints(str(copy), config.checkpoint)
    try:
        with caplog.at_level("WARNING"):
            _, record = checkpoints.restore_policy(like)
    finally:
        checkpoints.close()
    assert record["rl_step"] == 2
    assert any("checkpoints/3 is unreadable or corrupt" in r.getMessage() for r in caplog.records)


def _bytes_read() -> int:
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar:")).split()[1])


def test_evaluate_with_the_workdir_alone_reproduces_the_run_s_last_evaluation(job, capsys):
    from benchmarks import default_job

    workdir, result = job
    out = evaluate.main(["--workdir", str(workdir)])
    (written,) = [  # eval/<time>.json, beside its .md and .problems.json
        p
        for p in (workdir / "eval").glob("*.json")
        if p.name[0].isdigit() and p.suffixes == [".json"]
    ]
    assert default_job.reevaluated(str(workdir), str(written))  # BENCHMARKS.md's check
    assert "cli_equals_report=True" in capsys.readouterr().out
    (dataset,) = out
    assert dataset == "countdown" == result.report["dataset"]
    with open(workdir / "eval" / "step_3.json") as f:
        periodic = json.load(f)[dataset]
    assert out[dataset]["summary"] == periodic
    after = result.report["after"]
    assert out[dataset]["summary"]["mean@4"] == after["mean_at_k"]
    assert out[dataset]["summary"]["correct_answers"] == after["distinct_correct"]
    # A flag given changes that setting alone: two samples, the same problems and prompts.
    smaller = evaluate.main(["--workdir", str(workdir), "--k", "2", "--step", "2"])
    assert smaller[dataset]["summary"]["problems"] == periodic["problems"]
    assert "mean@2" in smaller[dataset]["summary"]


def test_the_report_states_the_machine_the_run_ran_on(job, tmp_path, monkeypatch, capsys):
    """report.json records the backend, device kind and count, processes and dtypes of the run,
    and BENCHMARKS.md's entry (benchmarks/default_job.py) prints that record, not a fixed text."""
    from benchmarks import default_job

    workdir, result = job
    machine = json.loads((workdir / "report.json").read_text())["machine"]
    assert machine["backend"] == jax.default_backend() == "cpu"
    assert machine["devices"] == jax.device_count() == 8
    assert machine["device_kind"] == jax.devices()[0].device_kind
    assert machine["processes"] == 1
    assert machine["dtype"] == machine["param_dtype"] == "float32"
    monkeypatch.chdir(tmp_path)  # the entry copies the plots into benchmarks/results
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    default_job.main(["--workdir", str(workdir)])
    printed = capsys.readouterr().out
    assert "8 cpu devices (JAX backend cpu) in 1 process; compute float32" in printed
    assert "fp32 on the CPU" not in printed
