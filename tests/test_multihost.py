"""Two processes on 127.0.0.1 (gloo collectives) form one 8-device mesh: sharded load, forward and
export across hosts give what one process gives."""

import os
import sys

import jobs
import numpy as np
import pytest

from flowrl_jax import testing
from flowrl_jax.models import load_hf

pytest.importorskip("torch")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_two_processes_load_run_and_export(tmp_path):
    checkpoint = str(tmp_path / "ckpt")
    testing.make_torch_checkpoint("qwen2", checkpoint, seed=4)
    port = jobs.free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = ROOT
    results = jobs.ranks(
        lambda rank: [
            sys.executable,
            "tests/multihost_worker.py",
            str(port),
            str(rank),
            checkpoint,
            str(tmp_path),
        ],
        lambda rank: env,
        timeout=240,
    )
    for code, out in results:
        assert code == 0, out[-3000:]
    tokens, mask = testing.left_padded_batch(7, batch=8, length=12, vocab=512)
    ref = np.asarray(load_hf(checkpoint)(tokens, mask))
    np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), ref, atol=1e-5, rtol=0)
    exported = np.asarray(load_hf(str(tmp_path / "export"))(tokens, mask))
    np.testing.assert_allclose(exported, ref, atol=1e-6, rtol=0)


def two_processes(args: list[str], timeout=400) -> list[str]:
    """`python -m <args>` as two processes of 4 CPU devices each, one 8-device mesh over gloo, with
    the entry point's --distributed flags. -> their outputs."""
    port = jobs.free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env |= {
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": ROOT,
    }
    results = jobs.ranks(
        lambda rank: [
            sys.executable,
            "-m",
            *args,
            "--distributed",
            f"--coordinator_address=127.0.0.1:{port}",
            "--num_processes=2",
            f"--process_id={rank}",
        ],
        lambda rank: env,
        timeout=timeout,
    )
    for code, out in results:
        assert code == 0, out[-3000:]
    return [out for _, out in results]


@pytest.mark.slow  # 4 processes start, each compiling its sampler: minutes on 2 cores
def test_export_and_evaluate_on_two_hosts_give_what_one_gives(tmp_path):
    """A run's export and evaluation started on two hosts (as on a pod: every host runs the same
    command) initialise distributed JAX, restore the policy over both hosts' devices, and write
    once: the same weights and the same figures as one process on 8 devices."""
    import json

    import jax

    from flowrl_jax import evaluate, export
    from flowrl_jax import mesh as mesh_lib
    from flowrl_jax.config import base_config
    from flowrl_jax.trainer.run import train

    workdir = str(tmp_path / "run")
    config = base_config()
    config.workdir = workdir
    config.train.steps = 1
    mesh = mesh_lib.make_mesh({"fsdp": 4, "tensor": 2})
    with jax.set_mesh(mesh):
        train(config, mesh)
    one = export.export(workdir, out=str(tmp_path / "one"), mesh=mesh)
    outputs = two_processes(
        ["flowrl_jax.export", f"--workdir={workdir}", f"--out={tmp_path / 'two'}",
         "--mesh=fsdp=4,tensor=2"]
    )  # fmt: skip
    assert outputs[0].strip().splitlines()[-1] == str(tmp_path / "two")
    assert str(tmp_path / "two") not in outputs[1]  # process 1 neither writes nor prints it
    tokens, mask = testing.left_padded_batch(3, batch=4, length=10, vocab=300)
    np.testing.assert_array_equal(
        np.asarray(load_hf(str(tmp_path / "two"))(tokens, mask)),
        np.asarray(load_hf(one)(tokens, mask)),
    )

    flags = ["--task=digits", "--k=2", "--problems=8", "--mesh=fsdp=4,tensor=2"]
    evaluate.main([f"--workdir={workdir}", *flags, f"--out={tmp_path / 'eval_one'}"])
    two_processes(
        ["flowrl_jax.evaluate", f"--workdir={workdir}", *flags, f"--out={tmp_path / 'eval_two'}"]
    )
    a = json.loads((tmp_path / "eval_one.json").read_text())
    b = json.loads((tmp_path / "eval_two.json").read_text())
    assert a == b and a  # the same figures, from the same keys on the same mesh shape
