"""The trainer on a mesh computes what it computes on one device: 3 RL steps of the tiny model on 8
CPU devices (fsdp=4, tensor=2, gradients accumulated over 2 micro-batches) against one device, and 2 processes (2 CPU devices each, gloo
collectives, one data shard each) against one process with 4 devices (both shards)."""

import json
import os
import sys

import jax
import jobs
import numpy as np
import pytest

from flowrl_jax import mesh as mesh_lib
from flowrl_jax.config import base_config
from flowrl_jax.models import from_config
from flowrl_jax.tasks import digits
from flowrl_jax.trainer.checkpoint import Checkpoints
from flowrl_jax.trainer.run import run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING = ("time/", "perf/", "rollout/tokens_per_s", "train/tokens_per_s")


def config_for(workdir, steps, micro_batches=1, data_shards=1, fused="auto"):
    config = base_config()
    config.train.fused = fused
    config.task.data_shards = data_shards
    config.workdir = str(workdir)
    config.train.steps = steps
    config.train.micro_batches = micro_batches
    config.checkpoint.every = 0  # the end only
    return config


def train_on(mesh, workdir, steps, micro_batches=1, data_shards=1, fused="auto"):
    config = config_for(workdir, steps, micro_batches, data_shards, fused)
    with jax.set_mesh(mesh):
        model, tokenizer = from_config.build(config.model, mesh, config.seed)
        return run(config, mesh, model, tokenizer, digits.task())


def metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in rows]


def assert_metrics_close(a, b):
    """To 1e-5, absolute (some diagnostics are ~0 up to rounding, e.g. flowrl/logz_optimal of
    group-normalised rewards) and relative (the FlowRL loss is ~170)."""
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for k in ra:
            np.testing.assert_allclose(rb[k], ra[k], rtol=1e-5, atol=1e-5, err_msg=k)


def assert_trees_close(a, b):
    leaves_b = jax.tree.leaves(b)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), leaves_b):
        np.testing.assert_allclose(
            mesh_lib.to_host(y), mesh_lib.to_host(x), atol=1e-5, rtol=0, err_msg=str(path)
        )


@pytest.mark.slow  # test_fused_on_eight_devices_equals_one is CI's eight-device run
def test_eight_devices_equal_one(tmp_path):
    one = mesh_lib.make_mesh({"fsdp": 1}, devices=jax.devices()[:1])
    eight = mesh_lib.make_mesh({"fsdp": 4, "tensor": 2})
    # The phased loop (its per-phase times are checked below; tests/test_fused.py has the fused
    # step on 8 devices).
    a = train_on(one, tmp_path / "one", steps=3, fused="false")
    b = train_on(eight, tmp_path / "eight", steps=3, micro_batches=2, fused="false")
    q = b.state.params["policy"]["layers"]["attn"]["q_proj"]["kernel"]
    assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    assert len(q.sharding.device_set) == 8
    assert_metrics_close(metrics(tmp_path / "one"), metrics(tmp_path / "eight"))
    assert_trees_close(a.state.params, b.state.params)
    assert_trees_close(a.state.opt_state, b.state.opt_state)
    check_logs(tmp_path / "eight", a.history)


def check_logs(workdir, history):
    """metrics.jsonl and the TensorBoard events hold each step's figures; the plot is drawn."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    for key in (
        "loss", "grad_norm", "reward/mean", "accuracy", "entropy", "flowrl/delta_abs",
        "response/length_mean", "response/length_max", "response/clipped_fraction",
        "rollout/tokens_per_s", "train/tokens_per_s", "time/rollout", "time/reward",
        "time/logprobs", "time/update", "time/step", "perf/mfu",
    ):  # fmt: skip
        assert all(np.isfinite(r[key]) for r in rows), key
    assert [r["accuracy"] for r in rows] == [m["accuracy"] for m in history]
    for r in rows:
        assert r["time/rollout"] + r["time/reward"] + r["time/update"] <= r["time/step"]
        assert 0 < r["perf/mfu"] < 1 and 0 <= r["response/clipped_fraction"] <= 1
    events = EventAccumulator(os.path.join(workdir, "tensorboard"))
    events.Reload()
    logged = events.Scalars("reward/mean")
    assert [e.step for e in logged] == [r["step"] for r in rows]
    np.testing.assert_allclose([e.value for e in logged], [r["reward/mean"] for r in rows], 1e-6)
    assert os.path.getsize(os.path.join(workdir, "metrics.png")) > 10_000


def two_processes(argv, env) -> list[str]:
    """Run ranks 0 and 1 (argv(rank), env(rank)) to the end; -> their outputs. Both must succeed."""
    results = jobs.ranks(argv, env)
    for code, out in results:
        assert code == 0, out[-3000:]
    return [out for _, out in results]


@pytest.mark.slow  # CI's multi-process runs: tests/test_gcs_workdir.py's and the restore agreement's
def test_two_processes_equal_one(tmp_path):
    """Also per-host data: the two processes each encode and draw one of two data shards, and
    equal one process that owns both."""
    steps, shape = 2, {"fsdp": 2, "tensor": 2}
    mesh = mesh_lib.make_mesh(shape, jax.devices()[:4])
    reference = train_on(mesh, tmp_path / "one", steps, data_shards=2)
    port, workdir = jobs.free_port(), tmp_path / "two"
    outputs = two_processes(
        lambda rank: jobs.train_argv(
            workdir,
            f"--config.train.steps={steps}",
            "--config.checkpoint.every=0",
            "--config.mesh.fsdp=2",
            "--config.mesh.tensor=2",
            "--config.task.data_shards=-1",
            *jobs.distributed(port, rank),
        ),
        lambda rank: jobs.host_env(2),
    )
    assert "RL steps 1-2" in outputs[0] and "RL steps 1-2" not in outputs[1]  # process 0 prints
    for out in outputs:  # each process encoded its own half of the 100 prompts
        assert "shard of 50 rows: kept 50 of 50 prompts" in out
    assert_metrics_close(metrics(tmp_path / "one"), metrics(workdir))
    checkpoints = Checkpoints(str(workdir), base_config().checkpoint)
    saved, record = checkpoints.restore_latest(reference.state)  # onto this process's 4 devices
    checkpoints.close()
    assert record["rl_step"] == steps and int(saved.step) == int(reference.state.step)
    assert_trees_close(reference.state.params, saved.params)
    assert_trees_close(reference.state.opt_state, saved.opt_state)


@pytest.mark.slow  # two processes again; test_two_processes_equal_one is CI's multi-process run
def test_two_hosts_through_the_launcher_train_the_default_config_as_written(tmp_path):
    """launch/multi_gpu.sh with explicit hosts, the user's --config=FILE first, and the shipped
    default config's own data_shards=1 (every process draws every row): both processes train to the
    end, and equal one process on the same 4-device mesh."""
    steps = 2
    mesh = mesh_lib.make_mesh({"fsdp": 2, "tensor": 2}, jax.devices()[:4])
    train_on(mesh, tmp_path / "one", steps)
    port, workdir = jobs.free_port(), tmp_path / "two"
    env = jobs.host_env(2) | {
        "PYTHON": sys.executable,
        "NUM_HOSTS": "2",
        "COORDINATOR": f"127.0.0.1:{port}",
    }
    args = [
        "--config=flowrl_jax/config.py:base",
        f"--config.workdir={workdir}",
        f"--config.train.steps={steps}",
        "--config.checkpoint.every=0",
        "--config.mesh.fsdp=2",
        "--config.mesh.tensor=2",
    ]
    outputs = two_processes(
        lambda rank: ["bash", "launch/multi_gpu.sh", *args],
        lambda rank: env | {"HOST_RANK": str(rank)},
    )
    assert f"RL steps 1-{steps}" in outputs[0]
    for out in outputs:  # one shard: each process encoded all 100 prompts
        assert "kept 100 of 100 prompts" in out, out[-2000:]
    assert_metrics_close(metrics(tmp_path / "one"), metrics(workdir))


def test_hosts_that_see_different_checkpoints_all_stop_with_one_error(tmp_path):
    """A two-process run restarted where one host cannot read the newest checkpoint (its copy of
    the step lost its arrays), or sees no checkpoint at all (a workdir on each host's own disk):
    every process stops with the same error naming the step and the processes, instead of
    restoring different steps and hanging in the first collective."""
    import shutil

    shared = tmp_path / "shared"

    def argv(workdirs, steps, port):
        return lambda rank: jobs.train_argv(
            workdirs[rank],
            f"--config.train.steps={steps}",
            "--config.checkpoint.every=0",
            "--config.mesh.fsdp=4",
            *jobs.distributed(port, rank),
        )

    # The checkpoint of step 2, saved here on the 4 devices the two processes have between them
    # (a restore reshards it to their 2 + 2).
    train_on(mesh_lib.make_mesh({"fsdp": 4}, jax.devices()[:4]), shared, 2)
    hosts = [tmp_path / "host0", tmp_path / "host1"]
    for host in hosts:
        shutil.copytree(shared, host)
    shutil.rmtree(hosts[1] / "checkpoints" / "2" / "state")  # host 1 cannot read step 2

    def restart() -> list[str]:
        port = jobs.free_port()
        results = jobs.ranks(argv(hosts, 4, port), lambda rank: jobs.host_env(2), timeout=300)
        assert all(code != 0 for code, _ in results), results  # a hang is killed: a failure too
        assert not any("[killed after" in out for _, out in results), results
        return [out for _, out in results]

    for rank, out in enumerate(restart()):
        assert (
            f"HostsDisagree: the processes see different files in checkpoint {hosts[rank]}/"
            "checkpoints/2 (process 0: " in out
        ), out[-3000:]
    shutil.rmtree(hosts[1] / "checkpoints" / "2")  # host 1 sees no checkpoint at all
    for out in restart():
        assert "HostsDisagree: the processes see different checkpoints in" in out, out[-3000:]
        assert "process 0: 1 step(s), newest 2; process 1: 0 step(s), newest none" in out
