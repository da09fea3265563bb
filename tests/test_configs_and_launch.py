"""Every file in configs/ and launch/, found by listing the folders: configs parsed the way the
trainer's config flag parses them and checked against the numbers of docs/algorithms.md (typed here, not
read back from the files); launch scripts run in their dry-run modes and their commands checked."""

import glob
import importlib.util
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest
from absl import flags
from jax.sharding import AbstractMesh
from ml_collections import config_flags

from flowrl_jax import algorithms
from flowrl_jax.config import get_config as default_config
from flowrl_jax.lower import abstract_mesh
from flowrl_jax.trainer import check_sizes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))
LAUNCH_SH = sorted(glob.glob(os.path.join(ROOT, "launch", "*.sh")))
LAUNCH_PY = sorted(glob.glob(os.path.join(ROOT, "launch", "*.py")))
BASELINES = ["grpo", "ppo", "reinforce_pp", "dapo", "gspo"]
# ml_collections loads config files with the deprecated importlib load_module().
pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")


def name(path):
    return os.path.basename(path).rsplit(".", 1)[0]


def load(path, *overrides):
    """The config that `python -m flowrl_jax.train --config=path overrides...` runs with."""
    argv = ["train", f"--config={path}", *overrides]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, flag_values=flag_values, sys_argv=argv)
    flag_values(argv)
    return flag_values.config


# docs/algorithms.md, "The paper's recipe" (math, Qwen2.5-7B), and the algorithm sections.
MATH = {
    "rollout.n": 8,
    "train.prompts_per_step": 512,
    "train.minibatch_size": 256,  # 32 prompts x 8 samples
    "rollout.max_new_tokens": 8192,
    "rollout.temperature": 1.0,
    "rollout.top_p": 1.0,
    "rollout.top_k": 0,
    "optimizer.learning_rate": 1e-6,
    "optimizer.warmup_steps": 10,
    "optimizer.weight_decay": 0.1,
    "optimizer.grad_clip": 1.0,
    "model.dtype": "bfloat16",
    "model.param_dtype": "float32",
    "model.remat": "full",
    "mesh.fsdp": -1,
    "algorithm.name": "flowrl",
    "algorithm.flowrl.beta": 15.0,
    "algorithm.flowrl.is_weight": "clip",
    "algorithm.flowrl.is_clip_eps": 0.2,
    "algorithm.dapo.clip_eps_low": 0.2,
    "algorithm.dapo.clip_eps_high": 0.28,
}
PAPER = {
    # file -> (expected values, HF model named in the placeholder, a mesh it must run on)
    "qwen2_5_7b_math": ({**MATH, "mesh.tensor": 1}, "Qwen2.5-7B", (1, 8, 1)),
    "qwen2_5_32b_math": ({**MATH, "mesh.tensor": 4}, "Qwen2.5-32B", (1, 8, 4)),
    "r1_distill_qwen_7b_code": (
        {
            **MATH,
            "rollout.n": 8,
            "train.prompts_per_step": 64,
            "rollout.temperature": 0.6,
            "mesh.tensor": 1,
        },
        "DeepSeek-R1-Distill-Qwen-7B",
        (1, 16, 1),
    ),
}


def get(config, dotted):
    for part in dotted.split("."):
        config = config[part]
    return config


@pytest.mark.parametrize("path", CONFIGS, ids=name)
def test_config_loads_locked_with_the_default_keys(path):
    config = load(path)
    assert set(config.keys()) == set(default_config().keys())
    with pytest.raises((KeyError, AttributeError), match='Did you mean "model"'):
        load(path, "--config.modle.dtype=bfloat16")  # an unknown key is an error, not a new key
    with pytest.raises(flags.IllegalFlagValueError):
        load(path, "--config.rollout.n=eight")
    assert load(path, "--config.seed=7").seed == 7


def test_every_paper_config_is_shipped():
    assert set(PAPER) <= {name(p) for p in CONFIGS}


@pytest.mark.parametrize("file", sorted(PAPER))
def test_paper_config_matches_the_spec(file):
    expected, model, mesh_shape = PAPER[file]
    path = os.path.join(ROOT, "configs", f"{file}.py")
    config = load(path)
    got = {k: get(config, k) for k in expected}
    assert got == expected
    # 512 prompts / 32 per mini-batch = 16 optimiser steps per rollout batch (spec) for math.
    steps = config.train.prompts_per_step * config.rollout.n // config.train.minibatch_size
    assert steps == {"r1_distill_qwen_7b_code": 2}.get(file, 16)
    # The checkpoint is a placeholder naming the model, and a flag replaces it.
    assert config.model.checkpoint.startswith("/path/to/") and model in config.model.checkpoint
    assert load(path, "--config.model.checkpoint=/data/m").model.checkpoint == "/data/m"
    # The trainer's own size checks (group size, mini-batch, mesh) pass on a mesh of that shape.
    mesh = AbstractMesh(mesh_shape, ("data", "fsdp", "tensor"))
    assert check_sizes(config, mesh) == 256


REAL = [p for p in CONFIGS if name(p) != "default"]  # configs for real checkpoints


@pytest.mark.parametrize("path", REAL, ids=name)
def test_configs_for_real_checkpoints_have_real_defaults(path):
    """Not the tiny model's: no export + reload at every start, fp32 master weights under bf16
    compute, a real model's rate, long responses, hundreds of RL steps, a real task; and the DAPO
    baseline's overlong buffer fits the response budget (one override, nothing else)."""
    config = load(path)
    assert config.model.checkpoint.startswith("/path/to/")
    assert not config.smoke.enabled
    # fp32 master weights where they are trained; a LoRA recipe's base is frozen (no update
    # rounds into it: bf16), its adapters fp32 whatever the param dtype (models/lora.py).
    master = "bfloat16" if config.lora.rank > 0 else "float32"
    assert config.model.dtype == "bfloat16" and config.model.param_dtype == master
    assert config.optimizer.learning_rate <= 1e-5
    assert config.rollout.max_new_tokens >= 1024 and config.train.steps >= 100
    assert config.task.name == "file" and config.task.path.startswith("/path/to/")
    dapo = load(path, "--config.algorithm.name=dapo")
    # DAPO checks its buffer, on the recipe's own devices (its mesh resolved for plan.devices).
    check_sizes(dapo, abstract_mesh(dapo, dapo.plan.devices))
    from flowrl_jax.algorithms import dapo as dapo_lib

    L = dapo.rollout.max_new_tokens
    assert dapo_lib.buffer_length(dapo.algorithm.dapo, L) == round(0.2 * L)


def test_32b_tensor_parallel_keeps_whole_heads():
    tensor = load(os.path.join(ROOT, "configs", "qwen2_5_32b_math.py")).mesh.tensor
    heads, kv_heads, head_dim = 40, 8, 128  # Qwen2.5-32B config.json
    assert heads % tensor == 0 and kv_heads % tensor == 0
    assert (kv_heads * head_dim // tensor) % head_dim == 0  # a kv shard holds whole heads


# docs/algorithms.md, "The baselines": each baseline's published knobs (typed here, not read back).
BASELINE_KNOBS = {
    "grpo": {"clip_eps": 0.2, "kl_coef": 0.0, "loss_agg": "seq-mean-token-mean"},
    "ppo": {
        "gamma": 1.0, "lam": 0.95, "value_clip": 0.2, "vf_coef": 0.5, "loss_agg": "token-mean"
    },
    "reinforce_pp": {"kl_coef": 0.01, "gamma": 1.0, "loss_agg": "token-mean"},
    "dapo": {"clip_eps_low": 0.2, "clip_eps_high": 0.28, "loss_agg": "token-mean",
             "overlong_buffer_fraction": 0.2, "dynamic_sampling": True},
    "gspo": {"clip_eps_low": 3e-4, "clip_eps_high": 4e-4},
}  # fmt: skip


@pytest.mark.parametrize("file", sorted(PAPER))
@pytest.mark.parametrize("baseline", BASELINES)
def test_each_baseline_is_one_override(file, baseline):
    """--config.algorithm.name=<baseline> on a paper config runs that baseline with its published
    knobs and the paper's shared recipe, and passes every check a run makes before it builds."""
    from flowrl_jax.trainer import validate

    assert set(BASELINES) | {"flowrl"} == set(algorithms.names())
    assert set(BASELINE_KNOBS) == set(BASELINES)
    expected, _, mesh_shape = PAPER[file]
    path = os.path.join(ROOT, "configs", f"{file}.py")
    other = load(path, f"--config.algorithm.name={baseline}")
    section = other.algorithm[other.algorithm.name]
    assert algorithms.get(other.algorithm.name).name == baseline
    assert {k: section[k] for k in BASELINE_KNOBS[baseline]} == BASELINE_KNOBS[baseline]
    shared = {k: v for k, v in expected.items() if not k.startswith("algorithm.")}
    assert {k: get(other, k) for k in shared} == shared
    validate.check(other)
    check_sizes(other, AbstractMesh(mesh_shape, ("data", "fsdp", "tensor")))
    doc = importlib_doc(path)
    assert f"--config=configs/{file}.py" in doc and "--config.algorithm.name=grpo" in doc
    assert baseline in doc


def importlib_doc(path):
    spec = importlib.util.spec_from_file_location(name(path), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.__doc__


# ---------------------------------------------------------------------------------------- launch/


@pytest.fixture
def shell_env(tmp_path):
    """An environment with no SLURM / launcher variables and fake gcloud, python and git first on
    PATH: a dry run that ran any of them leaves a marker file and fails."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("gcloud", "python", "git"):
        script = bin_dir / tool
        script.write_text(f'#!/bin/sh\ntouch "{tmp_path}/ran_{tool}"\nexit 97\n')
        script.chmod(0o755)
    smi = bin_dir / "nvidia-smi"  # a machine with no GPU, whatever this one has
    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    smi.chmod(0o755)
    launcher_vars = {"NUM_HOSTS", "HOST_RANK", "COORDINATOR", "COORDINATOR_PORT", "GPUS_PER_HOST"}
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SLURM_") and k not in launcher_vars | {"DRY_RUN", "FOREGROUND", "WORKER"}
    }
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    yield env
    assert not list(tmp_path.glob("ran_*")), "a dry run ran a real command"


def bash(script, args=(), env=None, **extra):
    env = {**env, "DRY_RUN": "1", **extra}
    return subprocess.run(
        ["bash", os.path.join(ROOT, "launch", script), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def commands(out):
    assert out.returncode == 0, out.stderr
    return [shlex.split(line) for line in out.stdout.splitlines() if line.strip()]


# A dry run of every shell script; a new script must add its own here.
DRY_RUNS = {
    "multi_gpu.sh": ["--config.seed=3"],
    "tpu_pod.sh": ["run", "my-pod", "us-east5-a", "--config.seed=3"],
    "tpu_worker.sh": ["start", "--config.seed=3"],
}


@pytest.mark.parametrize("path", LAUNCH_SH, ids=os.path.basename)
def test_shell_script_parses_and_has_a_dry_run(path, shell_env):
    assert subprocess.run(["bash", "-n", path], capture_output=True).returncode == 0
    args = DRY_RUNS[os.path.basename(path)]  # KeyError: add the new script's dry run above
    argv = commands(bash(os.path.basename(path), args, shell_env))[-1]
    assert "--config.seed=3" in " ".join(argv)


@pytest.mark.parametrize("path", LAUNCH_PY, ids=os.path.basename)
def test_python_launcher_prints_help(path):
    out = subprocess.run([sys.executable, path, "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "usage" in out.stdout, out.stderr


def train_args(argv):
    """The arguments after `-m flowrl_jax.train`."""
    i = argv.index("flowrl_jax.train")
    assert argv[i - 1] == "-m"
    return argv[i + 1 :]


def parse_train(args):
    """The config `python -m flowrl_jax.train args...` builds, from these arguments in this order
    (ml_collections refuses a --config.* override before --config=FILE, as the trainer would)."""
    argv = ["train", *args]
    flag_values = flags.FlagValues()
    default = os.path.join(ROOT, "flowrl_jax", "config.py")
    config_flags.DEFINE_config_file("config", default, flag_values=flag_values, sys_argv=argv)
    flag_values(argv)
    return flag_values.config


def test_parse_train_refuses_an_override_before_the_config_file():
    with pytest.raises(Exception, match="before a value for --config"):
        parse_train(["--config.seed=1", "--config=configs/default.py"])


def test_multi_gpu_single_host(shell_env):
    (argv,) = commands(bash("multi_gpu.sh", ["--config.seed=3", "--config.workdir=a b"], shell_env))
    assert argv == [
        "env",
        "XLA_PYTHON_CLIENT_MEM_FRACTION=0.9",
        "python",
        "-m",
        "flowrl_jax.train",
        "--config.seed=3",
        "--config.workdir=a b",
    ]


def test_multi_gpu_explicit_hosts(shell_env):
    extra = dict(NUM_HOSTS="4", HOST_RANK="3", COORDINATOR="10.0.0.1:1234")
    given = ["--config=configs/default.py", "--config.seed=3"]
    (argv,) = commands(bash("multi_gpu.sh", given, shell_env, **extra))
    config = parse_train(train_args(argv))
    assert config.distributed.to_dict() == {
        "enabled": True,
        "coordinator_address": "10.0.0.1:1234",
        "num_processes": 4,
        "process_id": 3,
    }
    assert config.seed == 3


@pytest.mark.parametrize(
    "extra, message",
    [
        (dict(NUM_HOSTS="2", HOST_RANK="0"), "COORDINATOR"),
        (dict(NUM_HOSTS="2", COORDINATOR="h:1"), "HOST_RANK"),
        (dict(NUM_HOSTS="2", HOST_RANK="2", COORDINATOR="h:1"), "HOST_RANK=2"),
        (dict(NUM_HOSTS="two"), "NUM_HOSTS=two"),
    ],
)
def test_multi_gpu_refuses_incomplete_hosts(shell_env, extra, message):
    out = bash("multi_gpu.sh", [], shell_env, **extra)
    assert out.returncode != 0 and message in out.stderr and not out.stdout


SLURM_STEP = dict(
    SLURM_JOB_ID="12345",
    SLURM_NTASKS="2",
    SLURM_STEP_NUM_NODES="2",
    SLURM_PROCID="1",
    SLURM_LOCALID="0",
    SLURM_GPUS_ON_NODE="8",
)


@pytest.mark.parametrize(
    "nodelist", ["node001", "node001,host2", "node[001-0015],host2", "node[001,007-015],host2"]
)
def test_multi_gpu_under_slurm_derives_what_jax_would(shell_env, monkeypatch, nodelist):
    from jax._src.clusters.slurm_cluster import SlurmCluster

    env = {**SLURM_STEP, "SLURM_STEP_NODELIST": nodelist}
    given = ["--config=configs/default.py", "--config.seed=3"]
    (argv,) = commands(bash("multi_gpu.sh", given, shell_env, **env))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert SlurmCluster.is_env_present()
    config = parse_train(train_args(argv))
    assert config.distributed.to_dict() == {
        "enabled": True,
        # jax's own SLURM detection is the reference: the same coordinator host and port.
        "coordinator_address": SlurmCluster.get_coordinator_address(None, None),
        "num_processes": 2,
        "process_id": 1,
    }
    # One process drives all 8 GPUs of its node (jax alone would give it GPU SLURM_LOCALID only).
    ids = [a for a in argv if a.startswith("JAX_LOCAL_DEVICE_IDS=")]
    assert ids == ["JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7"]


def test_multi_gpu_under_slurm_counts_gpus_with_nvidia_smi(shell_env, tmp_path):
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.write_text('#!/bin/sh\necho "GPU 0: NVIDIA H100 (UUID: a)"\necho "GPU 1: NVIDIA H100"\n')
    smi.chmod(0o755)
    env = {**SLURM_STEP, "SLURM_STEP_NODELIST": "gpu[3-4]", "COORDINATOR_PORT": "5555"}
    del env["SLURM_GPUS_ON_NODE"]
    (argv,) = commands(bash("multi_gpu.sh", [], shell_env, **env))
    assert "JAX_LOCAL_DEVICE_IDS=0,1" in argv
    assert "--config.distributed.coordinator_address=gpu3:5555" in argv


@pytest.mark.parametrize(
    "extra, message",
    [
        (dict(SLURM_STEP, SLURM_STEP_NODELIST="n1", SLURM_NTASKS="16"), "--ntasks-per-node=1"),
        (dict(SLURM_JOB_ID="1", SLURM_JOB_NUM_NODES="2"), "outside srun"),
        (dict(SLURM_STEP, SLURM_STEP_NODELIST="n1", SLURM_GPUS_ON_NODE=""), "GPUS_PER_HOST"),
    ],
)
def test_multi_gpu_refuses_slurm_layouts_it_cannot_drive(shell_env, extra, message):
    out = bash("multi_gpu.sh", [], shell_env, **extra)
    assert out.returncode != 0 and message in out.stderr and not out.stdout


def test_tpu_pod_without_arguments_prints_usage(shell_env):
    out = subprocess.run(
        ["bash", "launch/tpu_pod.sh"], cwd=ROOT, env=shell_env, capture_output=True, text=True
    )
    assert out.returncode == 2 and "ACTION TPU_NAME ZONE" in out.stdout


def test_tpu_pod_create(shell_env):
    out = bash(
        "tpu_pod.sh", ["create", "my-pod", "us-east5-a"], shell_env, ACCELERATOR_TYPE="v5p-64"
    )
    assert commands(out) == [
        "gcloud compute tpus tpu-vm create my-pod --zone=us-east5-a "
        "--accelerator-type=v5p-64 --version=v2-alpha-tpuv5".split()
    ]
    extra = dict(ACCELERATOR_TYPE="v4-32", SPOT="1", PROJECT="proj")
    (argv,) = commands(bash("tpu_pod.sh", ["create", "p", "z"], shell_env, **extra))
    assert {"--version=tpu-ubuntu2204-base", "--spot", "--project=proj"} <= set(argv)
    out = bash("tpu_pod.sh", ["create", "p", "z"], shell_env)
    assert out.returncode != 0 and "ACCELERATOR_TYPE" in out.stderr
    out = bash("tpu_pod.sh", ["create", "p", "z"], shell_env, ACCELERATOR_TYPE="v9-8")
    assert out.returncode != 0 and "RUNTIME_VERSION" in out.stderr


def remote(argv):
    """The command a `gcloud ... ssh --command CMD` runs on each worker, split at '&&'."""
    assert argv[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"] and "--worker=all" in argv
    return argv[argv.index("--command") + 1].split(" && ")


def test_tpu_pod_install_copies_and_installs_on_every_worker(shell_env):
    archive, scp, ssh = commands(bash("tpu_pod.sh", ["install", "my-pod", "z"], shell_env))
    assert archive[0] == "git" and "archive" in archive and archive[-1] == "HEAD"
    tarball = archive[archive.index("-o") + 1]
    assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in scp
    assert scp[5:7] == [tarball, "my-pod:~/flowrl-jax.tar.gz"]
    steps = remote(ssh)
    assert "tar -xzf ~/flowrl-jax.tar.gz -C ~/flowrl-jax" in steps
    pip = [s for s in steps if " pip install " in s]
    assert len(pip) == 1 and "-r requirements.txt" in pip[0] and "jax[tpu]==0.10.2" in pip[0]


def test_tpu_pod_run_passes_overrides_through_two_shells(shell_env):
    given = ["--config=configs/qwen2_5_7b_math.py", "--config.workdir=/mnt/my runs/it's"]
    (argv,) = commands(bash("tpu_pod.sh", ["run", "my-pod", "z", *given], shell_env))
    cd, train = remote(argv)
    assert cd == "cd ~/flowrl-jax"
    worker_argv = shlex.split(train)  # what the worker's shell makes of it
    assert worker_argv[:3] == ["bash", "launch/tpu_worker.sh", "start"]  # detached
    # What the worker script then runs, with those arguments.
    (job,) = commands(bash("tpu_worker.sh", worker_argv[2:], shell_env))
    assert job[:2] == ["nohup", ".venv/bin/python"]
    args = train_args(job)
    assert args == [*given, "--config.distributed.enabled=True"]
    config = parse_train(args)  # as the worker's trainer parses them, in this order
    assert config.distributed.enabled and config.workdir == "/mnt/my runs/it's"

    (argv,) = commands(bash("tpu_pod.sh", ["run", "p", "z", *given], shell_env, FOREGROUND="1"))
    cd, train = remote(argv)
    assert train_args(shlex.split(train)) == args and train.startswith(".venv/bin/python -m ")


def test_tpu_pod_status_logs_and_stop_reach_the_workers(shell_env):
    for action, worker in [("status", "all"), ("stop", "all"), ("logs", "3")]:
        (argv,) = commands(bash("tpu_pod.sh", [action, "p", "z"], shell_env, WORKER="3"))
        assert f"--worker={worker}" in argv
        command = argv[argv.index("--command") + 1]
        assert command.startswith("cd ~/flowrl-jax && ")
        assert command.endswith(f"bash launch/tpu_worker.sh {action}")


@pytest.mark.slow  # a training job from start to stop; CI checks the commands by dry run
def test_the_worker_job_outlives_its_shell_and_stops_with_a_checkpoint(tmp_path):
    """launch/tpu_worker.sh as a worker runs it (here, on this machine): `start` returns at once
    and the job runs on with its log, through the SIGHUP of its ssh session ending; `status` sees
    it; `stop` sends SIGTERM and waits: the job saves a checkpoint and exits."""
    env = dict(
        os.environ,
        PYTHON=sys.executable,
        PYTHONPATH=ROOT,
        FLOWRL_JAX_LOGS=str(tmp_path / "logs"),
    )
    workdir = tmp_path / "run"

    def worker(*args, timeout=120):
        done = subprocess.run(
            ["bash", "launch/tpu_worker.sh", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    started = worker(
        "start",
        "--config=flowrl_jax/config.py:base",
        f"--workdir={workdir}",
        "--config.train.steps=100000",
        "--config.checkpoint.every=0",
    )
    pid = int((tmp_path / "logs" / "train.pid").read_text())
    assert f"started pid {pid}" in started
    log = tmp_path / "logs" / "train.log"
    deadline = time.time() + 600
    while "step 2/100000" not in log.read_text():
        assert time.time() < deadline and "running (pid" in worker("status"), log.read_text()
        time.sleep(1)
    os.kill(pid, signal.SIGHUP)  # the ssh session that started it ends: the job runs on
    time.sleep(2)
    assert f"running (pid {pid})" in worker("status")
    assert "SIGHUP" not in log.read_text()
    stopped = worker("stop", timeout=600)
    assert "SIGTERM sent" in stopped
    text = log.read_text()
    assert "stopped by SIGTERM after step" in text, text[-2000:]
    step = int(text.split("stopped by SIGTERM after step ")[1].split(";")[0])
    assert os.listdir(workdir / "checkpoints") == [str(step)]
    assert "not running" in worker("status")


def test_tpu_pod_refuses_an_unknown_action(shell_env):
    out = bash("tpu_pod.sh", ["begin", "p", "z"], shell_env)
    assert out.returncode == 2 and "unknown action 'begin'" in out.stderr


# ------------------------------------------------------------------------------ launch/sweep.py


def sweep_module():
    spec = importlib.util.spec_from_file_location("sweep", os.path.join(ROOT, "launch", "sweep.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sweep_dry_run_expands_a_2x3_grid():
    out = subprocess.run(
        [sys.executable, "launch/sweep.py", "--workdir=/tmp/sw", "--grid", "seed=0,1"]
        + ["--grid", "model.tiny_family=qwen2,qwen3,llama", "--config.mesh.tensor=2", "--dry_run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    lines = [x for x in out.stdout.splitlines() if x.startswith("[")]
    assert len(lines) == 6 and "6/6 runs planned" in out.stdout
    runs = [shlex.split(x.split(": ", 1)[1]) for x in lines]
    workdirs = [[a for a in argv if a.startswith("--config.workdir=")] for argv in runs]
    assert all(len(w) == 1 for w in workdirs) and len({w[0] for w in workdirs}) == 6
    pairs = set()
    for argv in runs:
        config = parse_train(train_args(argv))
        pairs.add((config.seed, config.model.tiny_family))
        assert (
            config.workdir
            == f"/tmp/sw/seed={config.seed},model.tiny_family={config.model.tiny_family}"
        )
        assert config.mesh.tensor == 2  # the fixed override reaches every run
    assert pairs == {(s, f) for s in (0, 1) for f in ("qwen2", "qwen3", "llama")}


def test_sweep_print_gives_one_command_per_run(capsys, tmp_path):
    grid = ["--grid", "algorithm.name=flowrl,grpo", "--grid", "model.checkpoint=/d/a,/d/b"]
    assert sweep_module().main(["--print", "--python=python", f"--workdir={tmp_path}", *grid]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    dirs = set()
    for line in lines:
        argv = shlex.split(line)
        assert argv[:3] == ["python", "-m", "flowrl_jax.train"]
        config = parse_train(train_args(argv))
        assert os.path.dirname(config.workdir) == str(tmp_path)  # a path value does not nest dirs
        dirs.add(config.workdir)
    assert len(dirs) == 4


def test_sweep_runs_locally_and_counts_failures(tmp_path, capsys):
    fake = tmp_path / "fake_python"  # stands for the trainer: fails the seed=1 run
    fake.write_text('#!/bin/sh\necho "args: $*"\ncase "$*" in *--config.seed=1*) exit 3;; esac\n')
    fake.chmod(0o755)
    argv = [f"--python={fake}", f"--workdir={tmp_path / 'sw'}", "--grid", "seed=0,1,2"]
    assert sweep_module().main(argv) == 1
    assert "2/3 runs succeeded" in capsys.readouterr().out
    for seed in (0, 1, 2):
        log = (tmp_path / "sw" / f"seed={seed}" / "run.log").read_text()
        assert f"--config.workdir={tmp_path / 'sw'}/seed={seed} --config.seed={seed}" in log


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "no --grid given"),
        (["--grid", "seed"], "--grid 'seed'"),
        (["--grid", "=1,2"], "--grid '=1,2'"),
        (["--grid", "seed="], "--grid 'seed='"),
        (["--grid", "9seed=1"], "--grid '9seed=1'"),
        (["--grid", "seed=1,,2"], "empty value"),
        (["--grid", "seed=1,1"], "repeats a value"),
        (["--grid", "seed=1", "--grid", "seed=2"], "already an axis"),
        (["--grid", "workdir=a,b"], "use --workdir"),
        (["--grid", "seed=1,2", "--config.workdir=x"], "use --workdir"),
        (["--grid", "seed=1,2", "--config.seed=3"], "both a fixed override and a --grid axis"),
        (["--grid", "model.checkpoint=a/b,a_b"], "would share the workdir"),
    ],
)
def test_sweep_refuses_a_malformed_grid(args, message):
    out = subprocess.run(
        [sys.executable, "launch/sweep.py", "--dry_run", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0 and message in out.stderr and not out.stdout, out.stderr


@pytest.mark.parametrize(
    "grid, message",
    [("sed=0,1", 'Did you mean "seed"'), ("seed=0,x", "invalid literal for int()")],
)
def test_sweep_checks_overrides_against_the_config_before_running(grid, message, tmp_path):
    with pytest.raises(SystemExit, match=message):
        sweep_module().main(["--grid", grid, f"--workdir={tmp_path}"])
    assert not os.listdir(tmp_path)  # nothing ran
