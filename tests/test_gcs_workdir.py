"""A workdir on object storage: the default job (warm-up, RL, periodic evaluation, report), its export
and evaluation, a damaged checkpoint, a sweep, and a two-process run stopped by SIGTERM mid-step,
each with `gs://` paths against a real GCS server on 127.0.0.1 (the gcs_bucket fixture,
tests/conftest.py). Nothing may land on the local disk under a folder named "gs:" (what the POSIX
calls made of such a path before). tests/test_resume.py kills and resumes a run on gs://;
tests/test_workdir.py takes the lock there."""

import json
import os

import jax
import jobs
import numpy as np
import orbax.checkpoint as ocp
import pytest
from safetensors.numpy import load_file

from flowrl_jax import evaluate, export, storage
from flowrl_jax import mesh as mesh_lib
from flowrl_jax.config import base_config, get_config
from flowrl_jax.trainer import checkpoint as checkpoint_lib
from flowrl_jax.trainer.run import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING = ("time/", "perf/", "rollout/tokens_per_s", "train/tokens_per_s")


@pytest.fixture(autouse=True)
def nothing_local_named_gs():
    yield
    for where in (ROOT, os.getcwd()):
        assert not os.path.exists(os.path.join(where, "gs:")), where


def metrics(workdir) -> list[dict]:
    rows = [json.loads(line) for line in storage.read_text(f"{workdir}/metrics.jsonl").splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in rows]


def saved_arrays(workdir, step):
    """The train state's arrays of a checkpoint, onto one device of this process (whatever the
    devices and processes that saved it)."""
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    handlers = {"state": ocp.StandardCheckpointHandler()}
    with ocp.CheckpointManager(f"{workdir}/checkpoints", item_handlers=handlers) as manager:
        shapes = manager.item_metadata(step)["state"]
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), shapes
        )
        args = ocp.args.Composite(state=ocp.args.StandardRestore(target))
        return manager.restore(step, args=args)["state"]


@pytest.fixture(scope="module")
def gs_job(gcs_server):
    """The default job's config (countdown, the SFT warm-up, periodic evaluation, the report),
    shrunk to a few steps, trained in gs://<bucket>/countdown."""
    import urllib.request
    import uuid

    bucket = f"flowrl-job-{uuid.uuid4().hex[:8]}"
    urllib.request.urlopen(
        urllib.request.Request(
            gcs_server + "/storage/v1/b?project=test",
            data=json.dumps({"name": bucket}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
    )
    config = get_config()
    config.workdir = f"gs://{bucket}/countdown"
    config.model.tiny_hidden_size, config.model.tiny_layers = 0, 0  # the suite's tiny shape
    config.sft.steps, config.sft.batch_size, config.sft.optimizer.warmup_steps = 4, 8, 1
    config.train.steps, config.train.prompts_per_step = 3, 4
    config.optimizer.warmup_steps = 1
    config.eval.every, config.eval.problems, config.eval.k, config.eval.pass_k = 3, 6, 4, "1,4"
    config.checkpoint.every = 2
    mesh = mesh_lib.make_mesh(dict(config.mesh))
    with jax.set_mesh(mesh):
        result = train(config, mesh)
    assert result.last_step == 3 and result.report is not None
    return config.workdir, result


def test_the_default_job_on_gs_writes_its_whole_workdir_there(gs_job):
    """Checkpoints of RL and of the warm-up, each start's config, metrics, TensorBoard events, the
    plots, the evaluations and the report: all objects in the bucket, readable as written."""
    workdir, result = gs_job
    names = {name for name, _ in storage.files(workdir)}
    for expected in (
        "run.json",
        "config.json",
        "config.0.json",
        "metrics.jsonl",
        "metrics.png",
        "report.json",
        "report.md",
        "report_reward.png",
        "eval/before.json",
        "eval/step_3.json",
        "eval/step_3.md",
        "sft/metrics.jsonl",
        "checkpoints/2/record/metadata",
        "checkpoints/3/record/metadata",
    ):
        assert expected in names, sorted(names)
    assert "lock" not in names  # released at the end
    assert any(n.startswith("compile_cache/") for n in names)  # JAX's cache, read on a restart
    assert json.loads(storage.read_text(f"{workdir}/report.json")) == json.loads(
        json.dumps(result.report)
    )
    assert [r["step"] for r in metrics(workdir)] == [1, 2, 3]
    assert "checkpoint:" in storage.read_text(f"{workdir}/eval/step_3.md")  # appended to it
    # The TensorBoard events: one file, every step's scalars (uploaded whole after each step).
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    (events,) = [n for n in names if n.startswith("tensorboard/events.out.tfevents")]
    local = os.path.join(os.environ.get("TMPDIR", "/tmp"), os.path.basename(events))
    with open(local, "wb") as f:
        f.write(storage.path(f"{workdir}/{events}").read_bytes())
    steps = [e.step for e in EventFileLoader(local).Load() if e.summary.value]
    os.remove(local)
    assert steps == [1, 2, 3]
    with ocp.CheckpointManager(f"{workdir}/checkpoints") as manager:
        assert manager.all_steps() == [2, 3]


def test_export_and_evaluate_read_a_gs_run(gs_job, tmp_path, capsys):
    """The export of a gs:// run, to gs:// (by default, under the workdir) and to a local
    directory: the same files, the weights the run holds. Its evaluation from the workdir alone
    equals the run's own last evaluation."""
    workdir, result = gs_job
    out = export.export(workdir)
    assert out == f"{workdir}/export/step_3"
    local = export.export(workdir, out=str(tmp_path / "local"))
    assert storage.files(out) == storage.files(local)
    weights = load_file(os.path.join(local, "model.safetensors"))
    policy = result.state.params["policy"]
    np.testing.assert_array_equal(
        weights["model.embed_tokens.weight"], np.asarray(policy["embed"]["embedding"])
    )
    got = evaluate.main(["--workdir", workdir])
    periodic = json.loads(storage.read_text(f"{workdir}/eval/step_3.json"))
    (dataset,) = got
    assert got[dataset]["summary"] == periodic[dataset]
    written = [n for n, _ in storage.files(f"{workdir}/eval") if n[0].isdigit()]
    assert len([n for n in written if n.endswith(".problems.json")]) == 1, written


def test_a_damaged_checkpoint_on_gs_is_set_aside(gcs_bucket, caplog):
    """A step whose arrays are gone from the bucket is skipped with a warning, moved to
    checkpoints.damaged/ (copied, then deleted: object storage has no rename), and the step before
    it is restored."""
    from test_resume import _tiny_state

    workdir = f"{gcs_bucket}/run"
    cfg = base_config().checkpoint
    cfg.async_save = False
    like = _tiny_state()
    ck = checkpoint_lib.Checkpoints(workdir, cfg)
    for step in (2, 4):
        ck.save(step, like._replace(step=like.step + step), {"data": {"position": step}})
    ck.close()
    for name, _ in storage.files(f"{workdir}/checkpoints/4/state"):
        if "ocdbt.process" in name:
            storage.remove(f"{workdir}/checkpoints/4/state/{name}")
    with caplog.at_level("WARNING"):
        ck = checkpoint_lib.Checkpoints(workdir, cfg)
        state, record = ck.restore_latest(like, set_aside=True)
        assert ck.steps() == [2]
        ck.close()
    assert record["data"] == {"position": 2} and int(state.step) == int(like.step) + 2
    assert f"checkpoint {workdir}/checkpoints/4 is unreadable or corrupt" in caplog.text
    assert storage.listdir(f"{workdir}/checkpoints.damaged") == ["4"]
    assert "record/metadata" in {n for n, _ in storage.files(f"{workdir}/checkpoints.damaged/4")}
    assert storage.listdir(f"{workdir}/checkpoints") == ["2"]


@pytest.mark.slow  # the sweep's own logic is in CI locally (tests/test_configs_and_launch.py)
def test_a_sweep_into_a_gs_base_directory(gcs_bucket):
    """launch/sweep.py with --workdir=gs://...: each run trains in its own gs:// workdir and its
    run.log is uploaded beside it."""
    done = jobs.module_cli(
        "launch.sweep",
        "--config=flowrl_jax/config.py:base",
        f"--workdir={gcs_bucket}/sweep",
        "--grid",
        "seed=3",
        "--config.train.steps=1",
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "1/1 runs succeeded" in done.stdout
    run_dir = f"{gcs_bucket}/sweep/seed=3"
    assert [r["step"] for r in metrics(run_dir)] == [1]
    assert "RL steps 1-1 of 1" in storage.read_text(f"{run_dir}/run.log")
    assert json.loads(storage.read_text(f"{run_dir}/config.json"))["seed"] == 3


# The reward of process 1 sends its own process SIGTERM once, at its 9th call: it scores every
# other response (4 of a step's 8), so that is during RL step 3, between the phases of the step.
PREEMPTING_REWARD = """
import os, signal
CALLS = [0]
def reward(prompt, response, row):
    CALLS[0] += 1
    if CALLS[0] == int(os.environ.get("PREEMPT_AT_CALL", "0")):
        os.kill(os.getpid(), signal.SIGTERM)
    return (len(response) % 5) / 4
"""


# -m slow for CI's 30 minutes (4.5 min alone): CI runs the one-process version on a local workdir
# (tests/test_resume.py), the kill -9 resume on gs:// and a whole run's workdir on gs:// (above);
# the agreement of two processes on a stop is checked here only.
@pytest.mark.slow
def test_two_processes_on_gs_stopped_mid_step_resume_exactly(gcs_bucket, tmp_path):
    """Two processes (one data shard each) train on gs://. Process 1 alone gets SIGTERM during
    RL step 3: both give the step up at the same phase, step 2 is saved (not a checkpoint step),
    and both exit. Restarted, they resume after step 2 and end with the metrics and the arrays of
    a two-process run never stopped, bit for bit."""
    module = tmp_path / "preempting.py"
    module.write_text(PREEMPTING_REWARD)

    def start(workdir, preempt=False):
        port = jobs.free_port()
        return jobs.ranks(
            lambda rank: jobs.train_argv(
                workdir,
                "--config.train.steps=4",
                "--config.checkpoint.every=0",  # the end only: step 2 is saved by the stop alone
                "--config.train.fused=false",  # the phased loop, which sees a stop between phases
                f"--config.task.reward={module}:reward",
                "--config.mesh.fsdp=4",
                "--config.task.data_shards=-1",
                *jobs.distributed(port, rank),
            ),
            lambda rank: (
                jobs.host_env(2) | ({"PREEMPT_AT_CALL": "9"} if preempt and rank == 1 else {})
            ),
            timeout=600,
        )

    broken, plain = f"{gcs_bucket}/broken", f"{gcs_bucket}/plain"
    stopped = start(broken, preempt=True)
    assert all(code == 0 for code, _ in stopped), stopped
    assert (
        "stopped during RL step 3 of 4 (SIGTERM), before its update; checkpoint of step 2"
        in (stopped[0][1])
    )
    assert storage.listdir(f"{broken}/checkpoints") == ["2"]
    assert [r["step"] for r in metrics(broken)] == [1, 2]
    resumed = start(broken)
    assert all(code == 0 for code, _ in resumed), resumed
    assert "resuming after RL step 2 of 4" in resumed[0][1]
    whole = start(plain)
    assert all(code == 0 for code, _ in whole), whole
    assert metrics(plain) == metrics(broken)
    pa, pb = saved_arrays(plain, 4), saved_arrays(broken, 4)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(pa), jax.tree.leaves(pb)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))
