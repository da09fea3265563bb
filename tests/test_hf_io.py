"""Loader and exporter behaviour beyond parity: slice-wise reads, dtypes, atomic export."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowrl_jax import mesh as mesh_lib
from flowrl_jax import testing
from flowrl_jax.models import hf_io, load_hf, save_hf

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("qwen3"))
    testing.make_torch_checkpoint("qwen3", path, seed=5)
    return path


def test_each_device_reads_only_its_slice(checkpoint, monkeypatch):
    """No callback ever returns more than one device's shard of a split tensor."""
    blocks = {}
    real = jax.make_array_from_callback

    def spy(shape, sharding, callback):
        def recording(index):
            block = callback(index)
            blocks.setdefault(tuple(sharding.spec), []).append((shape, block.shape))
            return block

        return real(shape, sharding, recording)

    monkeypatch.setattr(hf_io.jax, "make_array_from_callback", spy)
    load_hf(checkpoint, mesh=mesh_lib.make_mesh({"fsdp": 4, "tensor": 2}))
    q_spec = (None, "fsdp", "tensor")  # q/k/v, gate/up kernels [L, D, out]
    assert q_spec in blocks
    for shape, block in blocks[q_spec]:
        assert block == (shape[0], shape[1] // 4, shape[2] // 2)


def test_bf16_load_and_export(checkpoint, tmp_path):
    model = load_hf(checkpoint, dtype="bfloat16")
    leaves = jax.tree.leaves(model.params)
    assert all(x.dtype == jnp.bfloat16 for x in leaves)
    fp32 = load_hf(checkpoint)
    for a, b in zip(leaves, jax.tree.leaves(fp32.params)):  # bf16 = fp32 rounded, nothing else
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b.astype(jnp.bfloat16)))
    out = save_hf(model, str(tmp_path / "bf16"))
    reread = hf_io.safetensors_file.SafetensorsFile(os.path.join(out, "model.safetensors"))
    assert {str(reread.dtype(k)) for k in reread.keys()} == {"bfloat16"}
    again = load_hf(out, dtype="bfloat16")
    for a, b in zip(leaves, jax.tree.leaves(again.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_fp32_storage_with_bf16_compute(checkpoint):
    model = load_hf(checkpoint, dtype="bfloat16", param_dtype="float32")
    assert model.cfg.dtype == "bfloat16"
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(model.params))


def test_interrupted_export_leaves_nothing(checkpoint, tmp_path, monkeypatch):
    model = load_hf(checkpoint)
    calls = []

    def failing_layer(array, i):
        calls.append(i)
        if len(calls) == 5:
            raise RuntimeError("disk full")
        return np.asarray(array if i is None else array[i])

    monkeypatch.setattr(hf_io, "host_array", failing_layer)
    with pytest.raises(RuntimeError, match="disk full"):
        save_hf(model, str(tmp_path / "export"))
    assert os.listdir(tmp_path) == []  # no partial directory, no temporary left behind


def test_export_refuses_to_clobber_unless_asked(checkpoint, tmp_path):
    model = load_hf(checkpoint)
    target = tmp_path / "export"
    target.mkdir()
    (target / "precious.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        save_hf(model, str(target))
    assert (target / "precious.txt").read_text() == "keep"
    save_hf(model, str(target), overwrite=True)
    assert "model.safetensors" in os.listdir(target) and "precious.txt" not in os.listdir(target)
    assert sorted(os.listdir(tmp_path)) == ["export"]
