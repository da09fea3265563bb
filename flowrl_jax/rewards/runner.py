"""What runs inside the sandbox (its source is passed with `python -c`; never imported).

    tests MODE: run solution.py, then tests.py, in one namespace; then write the completion token
        (read from fd 3 before any untrusted code ran) on the last stdout line. A program that exits
        early, even with status 0, never reaches the token: it has passed nothing.
    io MODE SECONDS COUNT: for each case i (until one fails to exit 0 in time), fork; the child reads case_i.in on fd 0, writes fd 1 to
        out_i, runs solution.py as __main__; the parent waits at most SECONDS for it. Then the
        parent reports every case's exit and output as one JSON line on its own stdout, which no
        child can reach (it is closed in the child before the solution runs). The expected outputs
        never enter the sandbox: the host compares them.

The token and the report are what the host believes, and both are out of an honest program's reach.
They are not out of reach of a program that inspects this interpreter's memory (frames, gc): an
in-process harness cannot be defended against a program that rewrites it, so the reward only
promises what an unmodified test program checks.
"""

import json
import os
import select
import signal
import sys


def run_solution() -> None:
    with open("solution.py") as f:
        code = compile(f.read(), "solution.py", "exec")
    exec(code, {"__name__": "__main__", "__builtins__": __builtins__})


def tests_mode() -> None:
    token = os.read(3, 64)
    os.close(3)
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    for name in ("solution.py", "tests.py"):
        with open(name) as f:
            exec(compile(f.read(), name, "exec"), namespace)
    sys.stdout.flush()
    os.write(1, b"\n" + token + b"\n")


def io_mode(seconds: float, count: int) -> None:
    os.close(3)
    report = os.dup(1)
    results = []
    for i in range(count):
        child = os.fork()
        if child == 0:
            os.close(report)
            fd = os.open(f"case_{i}.in", os.O_RDONLY)
            os.dup2(fd, 0)
            out = os.open(f"out_{i}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(out, 1)
            os.close(fd), os.close(out)
            code = 0
            try:
                run_solution()
            except SystemExit as e:  # sys.exit() ends a solution normally
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException:  # noqa: BLE001 - the traceback goes to stderr, the case fails
                import traceback

                traceback.print_exc()
                code = 1
            sys.stdout.flush()
            os._exit(code)
        pidfd = os.pidfd_open(child)
        timed_out = not select.select([pidfd], [], [], seconds)[0]
        if timed_out:
            os.kill(child, signal.SIGKILL)
        _, status = os.waitpid(child, 0)
        os.close(pidfd)
        try:
            with open(f"out_{i}", "rb") as f:
                output = f.read(1 << 20).decode("utf-8", "replace")
        except OSError:
            output = ""
        results.append({"exit": os.waitstatus_to_exitcode(status), "timed_out": timed_out})
        results[-1]["stdout"] = output
        if timed_out or results[-1]["exit"] != 0:
            break  # the reward is 0 already: the remaining cases would only cost time
    os.write(report, ("\n" + json.dumps(results) + "\n").encode())


if __name__ == "__main__":
    if sys.argv[1] == "tests":
        tests_mode()
    else:
        io_mode(float(sys.argv[2]), int(sys.argv[3]))
