"""Full-size configs, abstractly (jax.eval_shape: nothing is allocated)."""

import math

import jax
import pytest
from jax.sharding import PartitionSpec as P

from flowrl_jax import mesh as mesh_lib
from flowrl_jax.models import KNOWN_SHAPES, known_config, param_shapes, partition


@pytest.mark.parametrize("name", ["qwen2.5-0.5b", "qwen2.5-7b", "qwen2.5-32b"])
def test_parameter_count_matches_published(name):
    shapes = param_shapes(known_config(name))
    count = sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))
    published = KNOWN_SHAPES[name]["params"]
    assert abs(count - published) / published < 0.005, (count, published)


@pytest.mark.parametrize("name", ["qwen2.5-7b", "qwen2.5-32b"])
def test_no_large_tensor_is_left_replicated(name):
    cfg = known_config(name)
    shapes = param_shapes(cfg)
    mesh = mesh_lib.make_mesh({"fsdp": 4, "tensor": 2})
    specs = partition.match(partition.rules_for(cfg.family), shapes, mesh)
    leaves = jax.tree_util.tree_leaves_with_path(shapes)
    spec_leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))
    large = [(partition.path_str(p), s) for (p, x), s in zip(leaves, spec_leaves)
             if math.prod(x.shape) > 1_000_000]
    assert len(large) >= 8
    for name_, spec in large:
        assert any(axis is not None for axis in spec), f"{name_} would be replicated: {spec}"
