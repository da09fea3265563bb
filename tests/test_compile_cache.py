"""The persistent compilation cache (trainer/compile_cache.py): a restarted run reads every
program back from `<workdir>/compile_cache` and compiles nothing; `train.compile_cache=off` writes
none. Each run is its own process, as a restart is."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINE = re.compile(r"compilation cache (\S+): (\d+) programs read, (\d+) compiled")


def train(workdir, *flags):
    cmd = [
        sys.executable,
        "-m",
        "flowrl_jax.train",
        "--config=flowrl_jax/config.py:base",
        f"--workdir={workdir}",
        # The phase marks call the host from the fused program; such a program is compiled
        # afresh by each process (on TPU and GPU they are off by default)
        "--config.train.fused_phase_times=false",
        *flags,
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


def test_a_restarted_run_reads_its_programs_from_the_cache(tmp_path):
    first = LINE.findall(train(tmp_path, "--config.train.steps=2"))
    assert first and first[-1][0] == str(tmp_path / "compile_cache")
    assert int(first[-1][1]) == 0 and int(first[-1][2]) >= 5  # state init, sampler, step, ...
    written = os.listdir(tmp_path / "compile_cache")  # one file per program
    assert len(written) == int(first[-1][2]), written
    log = train(tmp_path, "--config.train.steps=4")  # resumes after step 2
    assert "resuming after RL step 2 of 4" in log
    ((_, read, compiled),) = LINE.findall(log)
    assert (int(read), int(compiled)) == (int(first[-1][2]), 0), log[-2000:]


@pytest.mark.slow  # CI's time; the cache's use is in CI (above)
def test_off_writes_no_cache(tmp_path):
    log = train(tmp_path, "--config.train.compile_cache=off", "--config.train.steps=0")
    assert "compilation cache: off (train.compile_cache=off)" in log
    assert not os.path.exists(tmp_path / "compile_cache")
