"""Mesh factory, partition rules, and sharded forward/load equal to the single-device ones."""

import re

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from flowrl_jax import mesh as mesh_lib
from flowrl_jax import testing
from flowrl_jax.models import Model, load_hf, partition


def test_eight_cpu_devices():
    assert jax.device_count() == 8, "conftest sets --xla_force_host_platform_device_count=8"


def test_mesh_fills_minus_one():
    mesh = mesh_lib.make_mesh({"fsdp": -1, "tensor": 2})
    assert dict(mesh.shape) == {"data": 1, "fsdp": 4, "tensor": 2}
    assert mesh.axis_names == ("data", "fsdp", "tensor")


@pytest.mark.parametrize(
    "shape, message",
    [
        ({"fsdp": 3}, "needs 3 devices but 8 are available"),
        ({"fsdp": -1, "tensor": 3}, "do not divide the 8 available devices"),
        ({"fsdp": -1, "tensor": -1}, "only one axis may be -1"),
        ({"model": 2}, "mesh axes ['model'] do not exist"),
    ],
)
def test_bad_mesh_is_a_clear_error(shape, message):
    with pytest.raises(ValueError) as e:
        mesh_lib.make_mesh(shape)
    assert message in str(e.value)


def test_batch_not_divisible_by_mesh():
    mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    mesh_lib.check_batch(8, mesh)
    with pytest.raises(
        ValueError, match="batch=6 is not divisible by the mesh's data-parallel size 4"
    ):
        mesh_lib.check_batch(6, mesh)


def test_unmatched_parameter_is_an_error():
    cfg = testing.tiny_config("qwen3")
    params = Model.random(cfg).params
    params["logz_head"] = {"kernel": np.zeros((64, 1))}
    with pytest.raises(ValueError, match="no partition rule matches parameter 'logz_head/kernel'"):
        partition.match(partition.rules_for("qwen3"), params)


def test_scalars_and_undividable_dims_are_not_split():
    mesh = mesh_lib.make_mesh({"fsdp": 8})
    rules = [("scalar", P("fsdp")), ("odd", P("fsdp", None)), ("even", P("fsdp", None))]
    shapes = {"scalar": np.zeros(()), "odd": np.zeros((6, 4)), "even": np.zeros((16, 4))}
    specs = partition.match(rules, shapes, mesh)
    assert specs == {"scalar": P(), "odd": P(None, None), "even": P("fsdp", None)}


@pytest.mark.parametrize("family", testing.FAMILIES)
@pytest.mark.parametrize("shape", [{"fsdp": 4, "tensor": 2}, {"fsdp": 8}])
def test_sharded_forward_equals_single_device(family, shape):
    cfg = testing.tiny_config(family)
    single = Model.random(cfg, seed=3)
    mesh = mesh_lib.make_mesh(shape)
    shard = partition.shardings(partition.rules_for(family), single.params, mesh)
    sharded = Model(cfg, jax.device_put(single.params, shard), mesh=mesh)
    # Parameters really are split: the embedding is spread over every device.
    emb = sharded.params["embed"]["embedding"]
    assert len(emb.sharding.device_set) == 8
    assert emb.addressable_shards[0].data.size == emb.size // 8
    tokens, mask = testing.left_padded_batch(4, batch=8, length=16, vocab=cfg.vocab_size)
    ref = np.asarray(single(tokens, mask))
    out = sharded(tokens, mask)
    assert len(out.sharding.device_set) == 8
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", testing.FAMILIES)
def test_sharded_load_places_each_tensor_as_read(family, tmp_path):
    torch = pytest.importorskip("torch")  # noqa: F841  (writes the checkpoint)
    testing.make_torch_checkpoint(family, str(tmp_path), seed=2)
    mesh = mesh_lib.make_mesh({"fsdp": 4, "tensor": 2})
    single = load_hf(str(tmp_path))
    sharded = load_hf(str(tmp_path), mesh=mesh)
    specs = partition.match(partition.rules_for(family), single.params, mesh)
    for (path, leaf), spec in zip(
        jax.tree_util.tree_leaves_with_path(sharded.params),
        jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P)),
    ):
        assert leaf.sharding.spec == spec, partition.path_str(path)
    q = sharded.params["layers"]["attn"]["q_proj"]["kernel"]  # [L, D, H*Dh] over (fsdp, tensor)
    assert q.addressable_shards[0].data.shape == (q.shape[0], q.shape[1] // 4, q.shape[2] // 2)
    tokens, mask = testing.left_padded_batch(5, batch=8, length=12, vocab=512)
    np.testing.assert_allclose(
        np.asarray(sharded(tokens, mask)), np.asarray(single(tokens, mask)), atol=1e-5, rtol=0
    )


def test_activations_are_pinned_to_the_batch_axes_under_a_mesh():
    """Inside the context mesh the layer body constrains x [B, T, D] to (data x fsdp) on B."""
    import jax.numpy as jnp

    from flowrl_jax.models import forward, param_shapes

    cfg = testing.tiny_config("qwen3")
    tokens = jax.ShapeDtypeStruct((8, 16), jnp.int32)
    lower = jax.jit(forward, static_argnums=0).lower
    with jax.set_mesh(mesh_lib.make_mesh({"fsdp": 8})):
        text = lower(cfg, param_shapes(cfg), tokens, tokens).as_text()
    assert re.search(
        r'sharding_constraint %\w+ <@mesh, \[\{"data", "fsdp"\}, \{\}, \{\}\]> : '
        r"tensor<8x16x64xf32>",
        text,
    )
    assert "sharding_constraint" not in lower(cfg, param_shapes(cfg), tokens, tokens).as_text()
