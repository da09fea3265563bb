"""One process of the multi-host test (tests/test_multihost.py starts two of these).

    python tests/multihost_worker.py PORT RANK CHECKPOINT OUT_DIR
Each process owns 4 CPU devices; together they form one 8-device mesh (fsdp=4, tensor=2).
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")


def main(port, rank, checkpoint, out_dir):
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=int(rank))
    from jax.experimental import multihost_utils

    from flowrl_jax import mesh as mesh_lib
    from flowrl_jax import testing
    from flowrl_jax.models import load_hf, save_hf

    assert jax.device_count() == 8 and jax.local_device_count() == 4
    mesh = mesh_lib.make_mesh({"fsdp": 4, "tensor": 2})
    model = load_hf(checkpoint, mesh=mesh)
    q = model.params["layers"]["attn"]["q_proj"]["kernel"]
    assert not q.is_fully_addressable  # each host holds only its devices' slices
    tokens, mask = testing.left_padded_batch(7, batch=8, length=12, vocab=512)
    logits = multihost_utils.process_allgather(model(tokens, mask), tiled=True)
    save_hf(model, os.path.join(out_dir, "export"))
    if jax.process_index() == 0:
        np.save(os.path.join(out_dir, "logits.npy"), np.asarray(logits))
    multihost_utils.sync_global_devices("done")


if __name__ == "__main__":
    main(*sys.argv[1:])
