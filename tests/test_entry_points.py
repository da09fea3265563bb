"""The pulse test of the main job through its command line: the plain engine config end to end, an
unknown key refused, the job on a local HF checkpoint. (Every file in configs/ and launch/ is
checked, dry runs included, in test_configs_and_launch.py.)"""

import math
import os
import subprocess
import sys

import pytest

from flowrl_jax.models import load_hf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(args, **kw):
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, **kw
    )


@pytest.mark.slow  # minutes; the checks themselves have their own tests (decoder, sampler, export)
def test_the_plain_engine_config_runs_with_its_foundation_checks(tmp_path):
    """`python -m flowrl_jax.train --config=flowrl_jax/config.py:base` end to end on 8 CPU devices
    (fsdp=4, tensor=2) with the foundation checks, the algorithm switched by its one config key."""
    out = run(
        [
            "-m",
            "flowrl_jax.train",
            "--config=flowrl_jax/config.py:base",
            f"--config.workdir={tmp_path}",
            "--config.smoke.enabled=True",
            "--config.mesh.tensor=2",
            "--config.smoke.new_tokens=8",
            "--config.algorithm.name=gspo",
        ]
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "gspo: RL steps 1-2 of 2" in out.stdout
    losses = [float(x.split()[3]) for x in out.stdout.splitlines() if x.startswith("  step ")]
    assert len(losses) == 2 and all(map(math.isfinite, losses)), out.stdout[-2000:]
    assert "'data': 1, 'fsdp': 4, 'tensor': 2" in out.stdout
    diff = [x for x in out.stdout.splitlines() if "export -> reload max |logit diff|" in x]
    assert float(diff[0].split()[-1]) == 0.0
    sampled = [x for x in out.stdout.splitlines() if "sampled vs recomputed" in x]
    assert float(sampled[0].split()[-1]) < 1e-5  # on the 8-device mesh
    export = tmp_path / "smoke_export"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(export))
    model = load_hf(str(export))
    assert model.cfg.family == "qwen3" and model.num_params > 10_000


def test_unknown_config_key_is_an_error(tmp_path):
    out = run(["-m", "flowrl_jax.train", f"--config.workdir={tmp_path}", "--config.modle.dtype=x"])
    assert out.returncode == 2
    assert "no such key 'modle'; did you mean 'model'?" in out.stderr


@pytest.mark.slow  # minutes; loading (test_hf_io) and training (test_trainer_loop) run in CI
def test_main_job_on_a_local_hf_checkpoint(tmp_path):
    """configs/hf_checkpoint.py with a checkpoint written by transformers (+ its tokenizer)."""
    pytest.importorskip("torch")
    from flowrl_jax import testing

    ckpt = str(tmp_path / "ckpt")
    testing.make_torch_checkpoint("llama", ckpt, seed=3)
    testing.make_tiny_tokenizer(ckpt)
    out = run(
        [
            "-m",
            "flowrl_jax.train",
            "--config=configs/hf_checkpoint.py",
            f"--config.model.checkpoint={ckpt}",
            f"--config.workdir={tmp_path / 'run'}",
            # The config's real-model defaults, scaled down to the tiny checkpoint; the
            # foundation checks back on (the config turns them off).
            "--config.smoke.enabled=True",
            "--config.smoke.new_tokens=4",
            "--config.task.name=digits",
            "--config.train.steps=1",
            "--config.train.prompts_per_step=2",
            "--config.train.minibatch_size=0",
            "--config.train.micro_batches=1",
            "--config.rollout.max_new_tokens=8",
            "--config.rollout.n=4",
        ]
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "llama" in out.stdout and "bfloat16" in out.stdout
    diff = [x for x in out.stdout.splitlines() if "export -> reload max |logit diff|" in x]
    assert float(diff[0].split()[-1]) == 0.0
