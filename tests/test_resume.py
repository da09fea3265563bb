"""Exact resume: a run killed with SIGKILL mid-training and started again on the same workdir (on
gs://), then stopped with SIGTERM and started again, ends with the same parameters and the same per-step metrics
as an uninterrupted run of the same seed, bit for bit (CPU, fp32). Corrupt and partial checkpoints
are skipped, and a workdir refuses a run of another model."""

import json
import os
import signal

import jax
import jobs
import numpy as np
import orbax.checkpoint as ocp
import pytest

from flowrl_jax import storage
from flowrl_jax.config import base_config
from flowrl_jax.export import main as export_main
from flowrl_jax.models import load_hf
from flowrl_jax.trainer import checkpoint as checkpoint_lib
from flowrl_jax.trainer.workdir import claim_workdir, signature

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 8
TIMING = ("time/", "perf/", "rollout/tokens_per_s", "train/tokens_per_s")


def start(workdir, *extra):
    return jobs.start(
        workdir, f"--config.train.steps={STEPS}", "--config.checkpoint.every=2", *extra
    )


run_until = jobs.read_until


def finish(proc) -> str:
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out[-3000:]
    return out


def metrics(workdir) -> list[dict]:
    text = storage.read_text(os.path.join(workdir, "metrics.jsonl"))
    rows = [json.loads(line) for line in text.splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in rows]


def final_arrays(workdir):
    with ocp.CheckpointManager(os.path.join(workdir, "checkpoints")) as manager:
        assert manager.latest_step() == STEPS
        got = manager.restore(STEPS, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return got["state"]


def test_killed_and_preempted_run_resumes_exactly(tmp_path, gcs_bucket):
    """The broken run's workdir is on gs:// (the local GCS server), the plain one's on the local
    disk: the same run on either."""
    plain, broken = str(tmp_path / "plain"), f"{gcs_bucket}/broken"
    finish(start(plain))

    # SIGKILL during step 5. Step 4's save waited for step 2's to finish, so a complete checkpoint
    # exists (2, or 4 if its background write got done) and maybe a half-written one.
    job = start(broken)
    run_until(job, f"step 5/{STEPS}")
    job.send_signal(signal.SIGKILL)
    job.wait()
    with ocp.CheckpointManager(f"{broken}/checkpoints") as manager:  # finished saves only
        complete = manager.all_steps()
    assert max(complete) in (2, 4), complete

    job = start(broken)  # resumes; SIGTERM as soon as it has run a step
    resumed = max(complete)
    out = run_until(job, f"resuming after RL step {resumed}")
    out += run_until(job, f"step {resumed + 1}/{STEPS}")
    job.send_signal(signal.SIGTERM)
    out += finish(job)
    assert "stopped by SIGTERM after step" in out, out[-2000:]
    stopped = int(out.split("stopped by SIGTERM after step ")[1].split(";")[0])
    assert resumed < stopped < STEPS
    assert str(stopped) in storage.listdir(f"{broken}/checkpoints")

    out = finish(start(broken))  # runs the rest
    assert f"resuming after RL step {stopped}" in out

    a, b = metrics(plain), metrics(broken)
    assert [r["step"] for r in b] == list(range(1, STEPS + 1))
    assert a == b  # every algorithm diagnostic, reward, accuracy and length, bit for bit
    pa, pb = final_arrays(plain), final_arrays(broken)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(pa), jax.tree.leaves(pb)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))

    # The export of the last checkpoint holds exactly the trained policy (no heads).
    export_main(["--workdir", broken, "--out", str(tmp_path / "export")])
    exported = load_hf(str(tmp_path / "export"))
    for (path, x), y in zip(
        jax.tree_util.tree_leaves_with_path(pb["params"]["policy"]),
        jax.tree.leaves(exported.params),
    ):
        np.testing.assert_array_equal(np.asarray(y), np.asarray(x), err_msg=str(path))
    assert "logz_head" in pb["params"]


def test_corrupt_and_partial_checkpoints_are_skipped(tmp_path, caplog):
    """A step whose data files are damaged, or whose arrays disagree with their fingerprint, is
    skipped with a warning naming it; an unfinished save's temporary directory is ignored."""
    cfg = base_config().checkpoint
    cfg.async_save = False
    like = _tiny_state()
    ck = checkpoint_lib.Checkpoints(str(tmp_path), cfg)
    for step in (2, 4, 6):
        bumped = like._replace(step=like.step + step)
        ck.save(step, bumped, {"data": {"position": step}})
    ck.close()
    root = tmp_path / "checkpoints"
    # Step 6: truncate every data file. Step 4: rewrite the saved fingerprint (as if bits flipped).
    for dirpath, _, files in os.walk(root / "6" / "state"):
        for name in files:
            if "ocdbt" in dirpath or name.startswith("manifest"):
                open(os.path.join(dirpath, name), "wb").close()
    record = root / "4" / "record" / "metadata"
    data = json.loads(record.read_text())
    row = next(i for i, (_, squares) in enumerate(data["fingerprint"]) if squares > 0)
    data["fingerprint"][row][1] *= 1.001
    record.write_text(json.dumps(data))
    (root / "8.orbax-checkpoint-tmp-1234").mkdir()  # what a killed save leaves

    with caplog.at_level("WARNING"):
        ck = checkpoint_lib.Checkpoints(str(tmp_path), cfg)
        state, record = ck.restore_latest(like)
        ck.close()
    assert record["data"] == {"position": 2} and int(state.step) == int(like.step) + 2
    text = caplog.text
    assert "8.orbax-checkpoint-tmp-1234 is incomplete" in text
    assert f"{root / '6'} is unreadable or corrupt" in text
    assert f"{root / '4'} is unreadable or corrupt" in text and "fingerprint" in text
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(like.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_workdir_of_another_model_or_algorithm_is_refused(tmp_path):
    from flowrl_jax import testing

    qwen3 = testing.tiny_config("qwen3")
    claim_workdir(str(tmp_path), signature(qwen3, "flowrl"))
    claim_workdir(str(tmp_path), signature(qwen3.replace(remat="full"), "flowrl"))  # same weights
    with pytest.raises(ValueError, match=r"different model.*hidden_size: 64 there, 96 here"):
        claim_workdir(str(tmp_path), signature(qwen3.replace(hidden_size=96), "flowrl"))
    with pytest.raises(ValueError, match=r"algorithm: 'flowrl' there, 'grpo' here"):
        claim_workdir(str(tmp_path), signature(qwen3, "grpo"))


def _tiny_state():
    from flowrl_jax import testing
    from flowrl_jax.models import Model
    from flowrl_jax.trainer import step as step_lib

    config = base_config()
    cfg = testing.tiny_config("qwen3")
    spec = step_lib.StepSpec(
        cfg, "flowrl", config.algorithm.flowrl, config.heads, prompt_len=4, temperature=1.0
    )
    optimizer = step_lib.make_optimizer(config.optimizer, config.heads)
    params = Model.random(cfg, seed=1).params
    return step_lib.init_state(spec, params, optimizer, jax.random.key(5))


# A reward that sends its own process SIGTERM once, while the host scores RL step 3 (8 responses a
# step on the plain engine: 2 prompts x 4 samples), unless the marker file says it has fired.
PREEMPTING_REWARD = """
import os, signal
CALLS = [0]
def reward(prompt, response, row):
    CALLS[0] += 1
    if CALLS[0] == 2 * 8 + 1 and not os.path.exists({marker!r}):
        open({marker!r}, "w").close()
        os.kill(os.getpid(), signal.SIGTERM)
    return (len(response) % 5) / 4
"""


def test_a_stop_during_a_step_saves_the_step_before_and_resumes_exactly(tmp_path):
    """SIGTERM during step 3's reward phase: the step is given up before its update, step 2 (not a
    checkpoint step) is saved at once, and the resumed run draws step 3's prompts again: the same
    metrics and parameters as a run never stopped."""
    marker = tmp_path / "fired"
    module = tmp_path / "preempting.py"
    module.write_text(PREEMPTING_REWARD.format(marker=str(marker)))
    flags = [
        "--config.train.steps=4",
        "--config.checkpoint.every=0",  # the end only: step 2 is saved by the stop alone
        "--config.train.fused=false",  # the phased loop, which sees a stop between phases
        f"--config.task.reward={module}:reward",
    ]
    plain, broken = str(tmp_path / "plain"), str(tmp_path / "broken")
    out = finish(jobs.start(broken, *flags))
    assert marker.exists()
    assert "stopped during RL step 3 of 4 (SIGTERM), before its update; checkpoint of step 2" in out
    assert os.listdir(os.path.join(broken, "checkpoints")) == ["2"]
    assert [r["step"] for r in metrics(broken)] == [1, 2]
    out = finish(jobs.start(broken, *flags))
    assert "resuming after RL step 2 of 4" in out
    finish(jobs.start(plain, *flags))  # the marker exists: never stopped
    assert metrics(plain) == metrics(broken)
    with ocp.CheckpointManager(os.path.join(plain, "checkpoints")) as a:
        pa = a.restore(4, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    with ocp.CheckpointManager(os.path.join(broken, "checkpoints")) as b:
        pb = b.restore(4, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(pa), jax.tree.leaves(pb)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))
