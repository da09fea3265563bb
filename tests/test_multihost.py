"""Two processes on 127.0.0.1 (gloo collectives) form one 8-device mesh: sharded load, forward and
export across hosts give what one process gives."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from flowrl_jax import testing
from flowrl_jax.models import load_hf

pytest.importorskip("torch")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_load_run_and_export(tmp_path):
    checkpoint = str(tmp_path / "ckpt")
    testing.make_torch_checkpoint("qwen2", checkpoint, seed=4)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = ROOT
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "tests/multihost_worker.py",
                str(port),
                str(rank),
                checkpoint,
                str(tmp_path),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(2)
    ]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    tokens, mask = testing.left_padded_batch(7, batch=8, length=12, vocab=512)
    ref = np.asarray(load_hf(checkpoint)(tokens, mask))
    np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), ref, atol=1e-5, rtol=0)
    exported = np.asarray(load_hf(str(tmp_path / "export"))(tokens, mask))
    np.testing.assert_allclose(exported, ref, atol=1e-6, rtol=0)
