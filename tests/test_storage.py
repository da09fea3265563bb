"""flowrl_jax/storage.py on a local directory and on a real GCS server on 127.0.0.1 (the gcs_bucket
fixture, tests/conftest.py): each operation behaves the same on both."""

import threading

import pytest

from flowrl_jax import storage


@pytest.fixture(params=["local", "gs"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path)
    return request.getfixturevalue("gcs_bucket") + "/run"


def test_write_read_and_overwrite_whole(root):
    p = f"{root}/config.json"
    storage.makedirs(root)
    storage.write_atomic(p, "one")
    storage.write_atomic(p, b"two")
    assert storage.path(p).read_text() == "two"
    assert storage.is_remote(p) == root.startswith("gs://")


def test_append_keeps_what_was_there(root):
    """gcsfs's open('a') would start the object over; append_text keeps every line."""
    storage.makedirs(root)
    p = f"{root}/metrics.jsonl"
    for i in range(3):
        storage.append_text(p, f'{{"step": {i}}}\n')
    assert storage.path(p).read_text().splitlines() == ['{"step": 0}', '{"step": 1}', '{"step": 2}']


def test_exactly_one_of_many_racing_creators_wins(root):
    """The lock's primitive: 8 threads create the same file at once; one succeeds, the content is
    the winner's, the others are told it exists."""
    storage.makedirs(root)
    p = f"{root}/lock"
    results, barrier = {}, threading.Barrier(8)

    def create(i):
        barrier.wait()
        results[i] = storage.create_exclusive(p, f"holder {i}")

    threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, won in results.items() if won]
    assert len(winners) == 1 and len(results) == 8
    assert storage.path(p).read_text() == f"holder {winners[0]}"
    assert not storage.create_exclusive(p, "late")


LO_UP = """
import fcntl, os, socket, struct, sys
# In a new network namespace loopback is down: bring it up (SIOCSIFFLAGS: IFF_UP | IFF_LOOPBACK |
# IFF_RUNNING), then run pytest there.
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    fcntl.ioctl(s, 0x8914, struct.pack("16sH14s", b"lo", 0x1 | 0x8 | 0x40, bytes(14)))
os.execv(sys.executable, [sys.executable, "-m", "pytest", *sys.argv[1:]])
"""


def test_the_gs_tests_reach_nothing_off_the_machine():
    """This module's gs:// tests and a checkpoint saved, damaged and set aside on gs:// (Orbax's
    tensorstore and gcsfs), run again in a network namespace that has loopback alone: they pass,
    so nothing in them (a metadata server, a token endpoint, a bucket-type probe) leaves the
    machine."""
    import os
    import subprocess
    import sys

    if subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode != 0:
        pytest.skip("this machine does not allow unprivileged network namespaces (unshare -rn)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(
        ["unshare", "-rn", sys.executable, "-c", LO_UP, "-q", "-p", "no:xdist",
         "-p", "no:cacheprovider", "tests/test_storage.py", "-k", "gs and not off_the_machine",
         "tests/test_gcs_workdir.py::test_a_damaged_checkpoint_on_gs_is_set_aside"],
        cwd=root, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout, done.stdout[-1000:]
