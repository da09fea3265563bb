"""Programs checked to lower for TPU and GPU on this CPU (flowrl_jax/lower.py): every program a run
compiles, built by the trainer's own builders, exported with jax.export for `tpu` and `cuda` over an
abstract mesh, in bf16. A program that cannot lower is named with what stopped it."""

import json
import os
import subprocess
import sys

import pytest

from flowrl_jax import config as config_lib
from flowrl_jax import lower

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def names(rows, platform):
    return [r.program for r in rows if r.platform == platform]


def test_the_default_job_lowers_for_tpu_and_cuda_in_bf16():
    """The default job's programs; its countdown reward runs on the host, so on an accelerator the
    trainer keeps the phased loop (callback-free programs), and that is what is lowered, with
    each platform's attention kernel."""
    config = config_lib.get_config()
    config.model.dtype = "bfloat16"
    rows = lower.check(config, ["tpu", "cuda"], devices=8)
    failed = [(r.program, r.platform, r.error) for r in rows if not r.ok]
    assert not failed, failed
    for platform in ("tpu", "cuda"):
        assert names(rows, platform) == [
            "sampler",
            "logprobs",
            "advantages",
            "update",
            "sft_update",
        ]
    assert all(r.ops > 100 for r in rows)
    # model.attention 'auto' resolves for the platform lowered for: scoring and the updates
    # carry splash on tpu and cuDNN's kernel on cuda; the sampler (a cache) neither.
    calls = {(r.program, r.platform): set(r.kernels) for r in rows}
    for program in ("logprobs", "update", "sft_update"):
        assert "tpu_custom_call" in calls[program, "tpu"]
        assert "__cudnn$fmhaScaleBiasSoftmax" in calls[program, "cuda"]
    assert calls["sampler", "tpu"] == calls["sampler", "cuda"] == set()


def test_the_fused_step_lowers_with_a_compiled_reward():
    """digits has a compiled reward: on an accelerator the trainer fuses, without phase marks;
    here with the slot sampler inside (16 slots over 8 device groups; the static sampler is the
    default job's, above) and packed scoring and update (rows of 96 tokens, one per device)."""
    config = config_lib.get_config("base")
    config.model.dtype = "bfloat16"
    assert config.task.name == "digits"
    config.train.prompts_per_step = 8  # fills the sampler's batch bucket on 8 devices
    config.rollout.slots = 16
    config.task.max_prompt_len, config.train.pack_length = 32, 96
    rows = lower.check(config, ["tpu", "cuda"], devices=8)
    assert [(r.program, r.platform) for r in rows if not r.ok] == []
    assert "fused_rl_step" in names(rows, "tpu") and "fused_rl_step" in names(rows, "cuda")
    # On cuda the slot sampler's decode step runs Pallas's GPU kernel (a Triton call).
    calls = {(r.program, r.platform): set(r.kernels) for r in rows}
    assert "__gpu$xla.gpu.triton" in calls["fused_rl_step", "cuda"]
    assert "__gpu$xla.gpu.triton" not in calls["fused_rl_step", "tpu"]


@pytest.mark.parametrize(
    "setting, where",
    [
        ("train.fused", "flowrl_jax/trainer/rewards.py"),  # a host reward inside the program
        ("train.fused_phase_times", "flowrl_jax/trainer/fused.py"),  # the phase marks
    ],
)
def test_a_program_that_cannot_lower_is_named_with_its_callback(setting, where):
    config = config_lib.get_config("base")
    config.model.dtype = "bfloat16"
    config.train.prompts_per_step = 8
    config.train.fused = "true"  # insisting: a host reward becomes a callback in the program
    if setting == "train.fused":
        config.task.name = "countdown"  # scored on the host
    else:
        assert config.task.name == "digits"  # a compiled reward: only the marks call the host
        config.train.fused_phase_times = "true"
    rows = lower.check(config, ["tpu"], devices=8)
    bad = [r for r in rows if not r.ok]
    assert [r.program for r in bad] == ["fused_rl_step"]
    assert "host callback(s) inside the program: pure_callback at" in bad[0].error
    assert where in bad[0].error


def test_the_7b_recipe_lowers_for_tpu_and_cuda(tmp_path):
    """The shipped Qwen2.5-7B recipe at its real shapes (512 prompts x 8, 2048 + 8192 tokens) on a
    16-device slice, through the command line, as a user checks it before a pod run."""
    out = tmp_path / "lowered.json"
    cmd = [
        sys.executable,
        "-m",
        "flowrl_jax.lower",
        "--config=configs/qwen2_5_7b_math.py",
        "--model=qwen2.5-7b",
        "--devices=16",
        "--platforms=tpu,cuda",
        f"--json={out}",
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "lowered 8 of 8"
    rows = json.loads(out.read_text())
    assert {(r["program"], r["platform"]) for r in rows} == {
        (p, q) for p in ("sampler", "logprobs", "advantages", "update") for q in ("tpu", "cuda")
    }


def test_bad_arguments_are_one_line():
    cmd = [sys.executable, "-m", "flowrl_jax.lower", "--platforms=tpu,metal"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "flowrl_jax.lower: error: platforms ['metal'] unknown; known: ['cpu', 'cuda', 'rocm', 'tpu']"
    )
