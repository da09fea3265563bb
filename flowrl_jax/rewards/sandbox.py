"""Run untrusted Python in a sandbox (Linux): `run_tests` and `run_io` start one launcher process
(`jail.py`) that isolates and limits the program (its docstring lists every layer) and report what
happened. Nothing here executes the program's code in this process.

Each call is independent and thread-safe (subprocess without preexec_fn), so a thread pool of W
threads runs W sandboxes at once. The host waits at most the wall limit plus a grace period; past it
the launcher's whole process group is killed.

Tested here as root (`mode='root'`: tests/test_sandbox.py). The unprivileged path (a user namespace,
`mode='userns'`) is written but was not exercised on this machine, where the tests run as root.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile

_HERE = os.path.dirname(os.path.abspath(__file__))
_JAIL = os.path.join(_HERE, "jail.py")
_GRACE_S = 10.0  # the launcher enforces the wall time; the host only backs it up


@dataclasses.dataclass(frozen=True)
class Limits:
    wall_s: float = 10.0  # per run (io: per case)
    cpu_s: float = 10.0  # per process
    memory_mb: int = 1024  # address space per process
    processes: int = 8  # processes and threads at once, the runner's included
    file_mb: int = 16  # largest file a process may write (its stdout included)
    disk_mb: int = 64  # the working directory's size (a tmpfs)
    open_files: int = 64
    output_kb: int = 256  # stdout / stderr kept for the caller


@dataclasses.dataclass
class Run:
    passed: bool  # tests: every test ran and passed; io: exit 0 (cases are judged by the caller)
    exit: int | None  # the runner's exit status; negative: killed by that signal
    timed_out: bool
    stdout: str
    stderr: str
    wall_s: float
    mode: str | None  # how it was isolated: 'root' or 'userns'
    cases: list[dict] | None = None  # io: per case {exit, timed_out, stdout}


class SandboxUnavailable(RuntimeError):
    pass


@functools.cache
def _runner_source() -> str:
    with open(os.path.join(_HERE, "runner.py")) as f:
        return f.read()


def _launch(files: dict[str, str], argv: list[str], wall_s: float, limits: Limits):
    base = tempfile.mkdtemp(prefix="flowrl-sandbox-")
    token = secrets.token_hex(16)
    read_fd, write_fd = os.pipe()
    try:
        os.chmod(base, 0o755)  # the program's uid must reach its work dir and the Python mount
        os.mkdir(os.path.join(base, "work"))
        os.mkdir(os.path.join(base, "python"))
        os.write(write_fd, token.encode())
        os.close(write_fd)
        cfg = dataclasses.asdict(limits) | {
            "wall_s": wall_s,
            "base": base,
            "files": files,
            "argv": argv,
            "runner": _runner_source(),
            "token_fd": read_fd,
            "python": os.path.realpath(sys.executable),
            "python_prefix": os.path.realpath(sys.base_prefix),
            "status_path": os.path.join(base, "status.json"),
        }
        stdout = tempfile.TemporaryFile(dir=base)
        stderr = tempfile.TemporaryFile(dir=base)
        with stdout, stderr:
            process = subprocess.Popen(
                [os.path.realpath(sys.executable), "-I", "-S", _JAIL, json.dumps(cfg)],
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                cwd=base,
                env={},
                pass_fds=(read_fd,),
                start_new_session=True,
            )
            try:
                process.wait(wall_s + _GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
                process.wait()
            outputs = []
            for f in (stdout, stderr):
                f.seek(0)
                outputs.append(f.read(limits.output_kb << 10).decode("utf-8", "replace"))
        try:
            with open(cfg["status_path"]) as f:
                status = json.load(f)
        except (OSError, ValueError):
            status = {"mode": None, "exit": None, "timed_out": True, "wall_s": wall_s}
            status["error"] = f"the launcher died (exit {process.returncode})"
        if status.get("error"):
            raise SandboxUnavailable(
                f"the sandbox could not be set up: {status['error']}. It needs Linux with either "
                "root or unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1)"
            )
        return token, status, *outputs
    finally:
        os.close(read_fd)
        shutil.rmtree(base, ignore_errors=True)


def run_tests(solution: str, tests: str, limits: Limits = Limits()) -> Run:
    """Run `solution` then the test program `tests` in one namespace (HumanEval style). Passed
    only if both ran to the end without an exception: an early exit, even with status 0, fails."""
    files = {"solution.py": solution, "tests.py": tests}
    token, status, out, err = _launch(files, ["tests"], limits.wall_s, limits)
    lines = out.rstrip("\n").rsplit("\n", 1)
    finished = status["exit"] == 0 and not status["timed_out"] and lines[-1] == token
    stdout = lines[0] if finished and len(lines) > 1 else ("" if finished else out)
    return Run(
        finished, status["exit"], status["timed_out"], stdout, err, status["wall_s"], status["mode"]
    )


def run_io(solution: str, inputs: list[str], limits: Limits = Limits()) -> Run:
    """Run `solution` once per input (stdin), each in its own process with `limits.wall_s`; the
    caller compares `Run.cases[i]['stdout']` with the expected output."""
    files = {"solution.py": solution} | {f"case_{i}.in": s for i, s in enumerate(inputs)}
    wall = limits.wall_s * len(inputs) + 1.0
    argv = ["io", str(limits.wall_s), str(len(inputs))]
    _, status, out, err = _launch(files, argv, wall, limits)
    try:
        cases = json.loads(out.rstrip("\n").rsplit("\n", 1)[-1])
    except ValueError:
        cases = None  # the runner itself was killed: no case counts
    ok = status["exit"] == 0 and not status["timed_out"] and isinstance(cases, list)
    return Run(
        ok, status["exit"], status["timed_out"], "", err, status["wall_s"], status["mode"], cases
    )
