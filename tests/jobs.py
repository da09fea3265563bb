"""`python -m flowrl_jax.train` as a child process, read line by line (shared by the tests that kill,
signal or race real jobs)."""

import os
import socket
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# One persistent compilation cache for every job a test worker starts (JAX_COMPILATION_CACHE_DIR,
# which a run uses when train.compile_cache is not set): the jobs of the suite compile the same
# small programs again and again, and a restarted job is meant to read them back anyway. The
# cache's own behaviour is tested apart, with each run's own cache (tests/test_compile_cache.py).
CACHE = tempfile.mkdtemp(prefix="flowrl-tests-compile-cache-")
# The suite's programs are compiled without LLVM's optimisations of the CPU code: most tests spend
# more time compiling than running, and the programs XLA builds (HLO, fusions, buffers) are the
# same; only the machine code is less tuned. Benchmarks and users keep the default.
SUITE_XLA_FLAGS = "--xla_backend_optimization_level=0"


def child_env(env: dict) -> dict:
    """`env` with the suite's compilation cache, unless it names one."""
    return {"JAX_COMPILATION_CACHE_DIR": CACHE} | env


def train_argv(workdir, *extra) -> list[str]:
    """`python -m flowrl_jax.train` on the plain engine config (two digits steps, no warm-up)."""
    argv = [sys.executable, "-m", "flowrl_jax.train", "--config=flowrl_jax/config.py:base"]
    return [*argv, f"--workdir={workdir}", *extra]


def start(workdir, *extra):
    """The plain engine config's trainer on `workdir`; stdout and stderr in one pipe."""
    env = child_env(dict(os.environ, PYTHONPATH=ROOT, PYTHONUNBUFFERED="1"))
    return subprocess.Popen(
        train_argv(workdir, *extra),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def host_env(devices: int) -> dict:
    """The environment of one process of a multi-process test: `devices` CPU devices of its own."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return env | {
        "PYTHONPATH": ROOT,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} {SUITE_XLA_FLAGS}",
    }


def distributed(port: int, rank: int, count: int = 2) -> list[str]:
    """The trainer's config flags that make it process `rank` of `count` on 127.0.0.1:`port`."""
    return [
        "--config.distributed.enabled=True",
        f"--config.distributed.coordinator_address=127.0.0.1:{port}",
        f"--config.distributed.num_processes={count}",
        f"--config.distributed.process_id={rank}",
    ]


def read_until(proc, text: str) -> str:
    """Read the job's output until a line contains `text`; returns what was read."""
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if text in line:
            return "".join(seen)
    proc.wait()
    raise AssertionError(f"the job ended before {text!r}:\n" + "".join(seen)[-3000:])


def train_cli(*args, timeout=900):
    """`python -m flowrl_jax.train args...` run to the end: the CompletedProcess."""
    return module_cli("flowrl_jax.train", *args, timeout=timeout)


def module_cli(module, *args, timeout=900):
    """`python -m module args...` run to the end: the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=child_env(dict(os.environ, PYTHONPATH=ROOT)),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ranks(argv, env, timeout=600, count=2) -> list[tuple[int, str]]:
    """Processes `argv(rank)` with `env(rank)`, ranks 0..count-1 started at once (stdout and stderr
    in one pipe), all waited for; one still running at `timeout` is killed, so a hang shows as a
    failed exit status. -> (exit status, output) per rank."""
    procs = [
        subprocess.Popen(
            argv(rank),
            cwd=ROOT,
            env=child_env(env(rank)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(count)
    ]
    outputs = []
    for p in procs:
        try:
            outputs.append(p.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            outputs.append(p.communicate()[0] + f"\n[killed after {timeout} s]")
    return [(p.returncode, out) for p, out in zip(procs, outputs)]
