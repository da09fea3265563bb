"""A workdir across starts: a damaged newest checkpoint is moved aside and saved again, a config
changed on resume is logged and kept per start, a second job on a live workdir is refused (a stale
lock taken over), Ctrl-C saves like SIGTERM, and bad input is one line with exit status 2."""

import json
import os
import signal
import subprocess
import sys
from contextlib import nullcontext

import jax
import jobs
import pytest

from flowrl_jax import mesh as mesh_lib
from flowrl_jax.config import base_config
from flowrl_jax.models import from_config
from flowrl_jax.tasks import digits
from flowrl_jax.trainer import workdir as workdir_lib
from flowrl_jax.trainer.run import StopFlag, run
from flowrl_jax.trainer.stop import Preempted

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING = ("time/", "perf/", "rollout/tokens_per_s", "train/tokens_per_s")


def train(workdir, steps, **overrides):
    config = base_config()
    config.workdir, config.train.steps = str(workdir), steps
    config.checkpoint.async_save = False
    for key, value in overrides.items():  # algorithm__flowrl__beta=5.0: algorithm.flowrl.beta
        *parents, name = key.split("__")
        node = config
        for parent in parents:
            node = node[parent]
        node[name] = value
    mesh = mesh_lib.make_mesh({"fsdp": 1}, jax.devices()[:1])
    with jax.set_mesh(mesh):
        model, tokenizer = from_config.build(config.model, mesh, config.seed)
        return run(config, mesh, model, tokenizer, digits.task())


def rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        lines = [json.loads(line) for line in f]
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in lines]


def test_a_damaged_checkpoint_a_stale_lock_and_a_changed_config_on_restart(tmp_path, caplog):
    damaged = tmp_path / "damaged"
    train(damaged, 4)  # checkpoints 2 and 4
    uninterrupted = rows(damaged)
    with open(damaged / "metrics.jsonl") as f:
        raw = [json.loads(line) for line in f]
    # Compiles are reported apart (step 1 compiles every program, step 2 none), and the rate is
    # logged: the warm-up's first step already at learning_rate / warmup_steps.
    assert raw[0]["time/compile"] > 1.0 and raw[1]["time/compile"] < 0.05
    assert raw[0]["time/step"] < raw[0]["time/compile"]
    config = base_config().optimizer
    want = [
        config.learning_rate * min(s, config.warmup_steps) / config.warmup_steps for s in (1, 2)
    ]
    assert [r["learning_rate"] for r in raw[:2]] == pytest.approx(want, rel=1e-6)
    for dirpath, _, files in os.walk(damaged / "checkpoints" / "4" / "state"):
        for name in files:  # truncate every data file of step 4
            open(os.path.join(dirpath, name), "wb").close()
    # A lock left by a job that is gone (SIGKILL): the next start takes it over with a warning.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    holder = {"host": os.uname().nodename, "pid": gone.pid, "started": "then"}
    (damaged / "lock").write_text(json.dumps(holder))
    with caplog.at_level("WARNING"):
        # Restores 2, trains 3 and 4, saves 4 again; with two keys changed that leave the numbers
        # as they were.
        again = train(damaged, 4, train__reward_timeout=300.0, checkpoint__keep=5)
    assert (again.first_step, again.last_step) == (2, 4)
    assert f"taking over the stale lock {damaged / 'lock'}: pid {gone.pid}" in caplog.text
    assert not (damaged / "lock").exists()  # released at the end
    aside = damaged / "checkpoints.damaged" / "4"
    assert aside.is_dir() and (aside / "state").is_dir()  # kept for inspection
    assert "moved the damaged checkpoint of step 4" in caplog.text
    assert sorted(os.listdir(damaged / "checkpoints")) == ["2", "4"]
    assert rows(damaged) == uninterrupted  # steps 3 and 4 retrained exactly

    # Each start's config is kept, and every key changed on resume is logged.
    changed = [r.getMessage() for r in caplog.records if "config changed" in r.getMessage()]
    assert changed == [
        "config changed since the last start: checkpoint.keep: 3 -> 5",
        "config changed since the last start: train.reward_timeout: 600.0 -> 300.0",
    ]
    first = json.loads((damaged / "config.0.json").read_text())
    second = json.loads((damaged / "config.2.json").read_text())
    assert first["checkpoint"]["keep"] == 3 and second["checkpoint"]["keep"] == 5
    assert second == json.loads((damaged / "config.json").read_text())

    caplog.clear()
    with caplog.at_level("WARNING"):
        done = train(damaged, 4, train__reward_timeout=300.0, checkpoint__keep=5)
    # The new step 4 reads back: nothing to do, no warning, no change.
    assert done.history == [] and done.last_step == 4 and not caplog.records


start, read_until = jobs.start, jobs.read_until


def test_a_second_job_is_refused_and_ctrl_c_saves(tmp_path):
    workdir = tmp_path / "run"
    first = start(workdir, "--config.train.steps=1000", "--config.checkpoint.every=0")
    read_until(first, "step 2/1000")
    lock = json.loads((workdir / "lock").read_text())
    assert lock["pid"] == first.pid
    second = start(workdir, "--config.train.steps=3")
    out = second.communicate(timeout=300)[0]
    assert second.returncode == 2, out[-2000:]
    error = [line for line in out.splitlines() if "error:" in line]
    assert len(error) == 1 and f"in use by another job: pid {first.pid} on host" in error[0]
    assert lock["started"] in error[0]

    first.send_signal(signal.SIGINT)  # Ctrl-C: save after this step, exit 0
    out = first.communicate(timeout=300)[0]
    assert first.returncode == 0, out[-2000:]
    stopped = int(out.split("stopped by SIGINT after step ")[1].split(";")[0])
    assert os.listdir(workdir / "checkpoints") == [str(stopped)]
    assert not (workdir / "lock").exists()  # released


@pytest.mark.parametrize("found", ["default", "ignored"])
def test_a_second_ctrl_c_stops_at_once_and_the_handler_found_comes_back(found):
    """Ctrl-C asks for a checkpoint, a second one stops at once; afterwards SIGINT is handled as it
    was before the run, whether by Python's default handler or ignored (a job started with `&` or
    under nohup inherits SIGINT ignored)."""
    before = {"default": signal.default_int_handler, "ignored": signal.SIG_IGN}[found]
    outer = signal.signal(signal.SIGINT, before)
    try:
        flag = StopFlag()
        try:
            os.kill(os.getpid(), signal.SIGINT)
            assert flag.requested() == "SIGINT"
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
        finally:
            flag.restore()
        assert signal.getsignal(signal.SIGINT) is before
    finally:
        signal.signal(signal.SIGINT, outer)


@pytest.mark.parametrize("found", ["default", "ignored"])
def test_sighup_stops_with_a_checkpoint_unless_nohup_ignores_it(found):
    """The ssh session of a foreground job going away (SIGHUP) asks for a checkpoint like SIGTERM;
    a job under nohup (SIGHUP ignored) keeps running, as nohup asked."""
    before = {"default": signal.SIG_DFL, "ignored": signal.SIG_IGN}[found]
    outer = signal.signal(signal.SIGHUP, before)
    try:
        flag = StopFlag()
        try:
            os.kill(os.getpid(), signal.SIGHUP)  # with SIG_DFL left in place this would end pytest
            assert flag.requested() == ("SIGHUP" if found == "default" else None)
            with pytest.raises(Preempted, match="SIGHUP") if found == "default" else nullcontext():
                flag.check()
        finally:
            flag.restore()
        assert signal.getsignal(signal.SIGHUP) is before
    finally:
        signal.signal(signal.SIGHUP, outer)


@pytest.fixture(params=["local", "gs"])
def lock_dir(request, tmp_path):
    """A workdir on the local disk, and one on the local GCS server (tests/conftest.py)."""
    if request.param == "local":
        return str(tmp_path)
    return request.getfixturevalue("gcs_bucket") + "/run"


def test_the_lock_refuses_a_live_job_elsewhere_and_takes_a_gone_one_s(lock_dir, monkeypatch):
    """Re-entrant within a process. Another host's job that still beats (rewrites its lock) is
    refused within a heartbeat; one whose lock stops changing (a VM recreated after a preemption
    finds its previous incarnation's) is taken over once the lock is STALE_AFTER old, not
    refused; one older than that is taken at once. On a local disk and on gs://."""
    import threading
    import time

    from flowrl_jax import storage

    monkeypatch.setattr(workdir_lib, "HEARTBEAT", 0.2)
    monkeypatch.setattr(workdir_lib, "STALE_AFTER", 2.0)
    lock = f"{lock_dir}/lock"
    with workdir_lib.WorkdirLock(lock_dir):
        with workdir_lib.WorkdirLock(lock_dir):  # the entry point, then the trainer
            pass
        assert storage.exists(lock)  # still the outer holder's
        time.sleep(0.5)
        assert json.loads(storage.read_text(lock))["beat"] >= 1  # its own heartbeat
    assert not storage.exists(lock)

    other = {"host": "elsewhere", "pid": 1, "started": "now", "beat": 0}
    storage.write_atomic(lock, json.dumps(other))
    stop = threading.Event()

    def beat():  # the other job, alive
        n = 0
        while not stop.wait(0.2):
            n += 1
            storage.write_atomic(lock, json.dumps(other | {"beat": n}))

    beating = threading.Thread(target=beat)
    beating.start()
    try:
        t0 = time.monotonic()
        with pytest.raises(workdir_lib.WorkdirBusy, match="pid 1 on host elsewhere, started now"):
            workdir_lib.WorkdirLock(lock_dir).acquire()
        assert time.monotonic() - t0 < 1.5  # refused once it saw a beat, not after STALE_AFTER
    finally:
        stop.set()
        beating.join()

    storage.write_atomic(lock, json.dumps(other))  # gone: the lock no longer changes
    t0 = time.monotonic()
    with workdir_lib.WorkdirLock(lock_dir):
        assert json.loads(storage.read_text(lock))["pid"] == os.getpid()
    assert 1.0 < time.monotonic() - t0 < 10
    if not storage.is_remote(lock):  # a lock long untouched is taken at once
        storage.write_atomic(lock, json.dumps(other))
        old = time.time() - 10
        os.utime(lock, (old, old))
        t0 = time.monotonic()
        with workdir_lib.WorkdirLock(lock_dir):
            pass
        assert time.monotonic() - t0 < 1.0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config.modle.dtype=x"], "--config.modle.dtype=x: no such key 'modle'; did you mean"),
        (["--config.rollout.n=abc"], "--config.rollout.n=abc: invalid literal for int()"),
        (["--config.train.minibatch_size=3"], "train.minibatch_size=3 is not a multiple of"),
        (["--config.seed=1", "--config=configs/default.py"], "before a value for --config"),
        (["--config=configs/nope.py"], "bad --config: "),
        pytest.param(  # CI: the same error in-process (test_serving), this form by the others
            ["--config.rollout.stop_tokens=hello world"],
            "'hello world' is not one token",
            marks=pytest.mark.slow,
        ),
        # Periodic evaluation's data is read before training, not at the first evaluation.
        (["--config.eval.every=1", "--config.eval.data=/nonexistent.jsonl"], "no such file"),
    ],
    ids=["key", "value", "size", "order", "file", "stop", "eval-data"],
)
def test_bad_config_is_one_line_and_exit_status_2(tmp_path, args, message):
    out = subprocess.run(
        [sys.executable, "-m", "flowrl_jax.train", f"--workdir={tmp_path}", *args],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("flowrl_jax.train: error: "), out.stderr
    assert message in lines[0]


def test_a_refused_job_writes_nothing_into_the_busy_workdir(tmp_path):
    """The workdir's lock names a live job (a process of this host): a second job is refused with
    one line, exit 2, and every file in the workdir is as it was, names, bytes and times."""
    import socket
    import time

    holder = subprocess.Popen(["sleep", "120"])
    try:
        workdir = tmp_path / "busy"
        workdir.mkdir()
        (workdir / "lock").write_text(
            json.dumps(
                {
                    "host": socket.gethostname(),
                    "pid": holder.pid,
                    "process_start": workdir_lib._process_start(holder.pid),
                    "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                }
            )
        )
        (workdir / "notes.txt").write_text("the running job's own file\n")

        def snapshot():
            return {
                str(p.relative_to(workdir)): (p.read_bytes(), p.stat().st_mtime_ns)
                for p in sorted(workdir.rglob("*"))
                if p.is_file()
            }

        before = snapshot()
        done = jobs.train_cli("--config=flowrl_jax/config.py:base", f"--workdir={workdir}")
        assert done.returncode == 2, done.stderr[-2000:]
        errors = [line for line in done.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1 and f"in use by another job: pid {holder.pid}" in errors[0]
        assert snapshot() == before
    finally:
        holder.kill()
        holder.wait()
