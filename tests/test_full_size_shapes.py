"""Full-size configs, abstractly (jax.eval_shape: nothing is allocated)."""

import math

import jax
import pytest
from jax.sharding import PartitionSpec as P

from flowrl_jax import mesh as mesh_lib
from flowrl_jax.models import KNOWN_SHAPES, key_map, known_config, param_shapes, partition
from flowrl_jax.models.hf_io import hf_names


@pytest.mark.parametrize("name", sorted(KNOWN_SHAPES))
def test_parameter_count_matches_published(name):
    shapes = param_shapes(known_config(name))
    count = sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))
    published = KNOWN_SHAPES[name]["params"]
    assert abs(count - published) / published < 0.005, (count, published)


@pytest.mark.parametrize("name", sorted(KNOWN_SHAPES))
def test_every_tensor_matches_transformers_on_the_meta_device(name):
    """The key map against transformers' own model of the same config.json, built on torch's meta
    device (shapes only, no memory): same key set, and every shape (transposed where torch's Linear
    stores [out, in])."""
    torch = pytest.importorskip("torch")
    import transformers

    hf = dict(KNOWN_SHAPES[name]["hf"])
    config = transformers.AutoConfig.for_model(hf.pop("model_type"), **hf)
    with torch.device("meta"):
        reference = transformers.AutoModelForCausalLM.from_config(config)
    theirs = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    if config.tie_word_embeddings:
        theirs.pop("lm_head.weight")
    cfg = known_config(name)
    shapes = param_shapes(cfg)
    ours = {}
    for entry in key_map(cfg):
        shape = shapes
        for k in entry.ours:
            shape = shape[k]
        shape = shape.shape[1:] if entry.stacked else shape.shape
        for hf_name in hf_names(entry, cfg.num_layers):
            ours[hf_name] = tuple(reversed(shape)) if entry.transpose else tuple(shape)
    assert ours == theirs


@pytest.mark.parametrize("name", ["qwen2.5-7b", "qwen2.5-32b", "qwen3-8b", "llama-3.1-8b"])
def test_no_large_tensor_is_left_replicated(name):
    cfg = known_config(name)
    shapes = param_shapes(cfg)
    mesh = mesh_lib.make_mesh({"fsdp": 4, "tensor": 2})
    specs = partition.match(partition.rules_for(cfg.family), shapes, mesh)
    leaves = jax.tree_util.tree_leaves_with_path(shapes)
    spec_leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))
    large = [
        (partition.path_str(p), s)
        for (p, x), s in zip(leaves, spec_leaves)
        if math.prod(x.shape) > 1_000_000
    ]
    assert len(large) >= 8
    for name_, spec in large:
        assert any(axis is not None for axis in spec), f"{name_} would be replicated: {spec}"
