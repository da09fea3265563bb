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
