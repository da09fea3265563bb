"""LoRA adapters on our decoder (models/lora.py) against PEFT on the same torch checkpoint, and the
adapters' bookkeeping: zero B is the base model exactly, the base view, merging, the bad inputs."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict
from safetensors.numpy import save_file

from flowrl_jax import testing
from flowrl_jax.models import forward, init_params, load_hf, lora, partition, tiny

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")


def lora_config(rank=4, alpha=8.0, targets=None) -> ConfigDict:
    cfg = lora.default_config()
    cfg.rank, cfg.alpha = rank, alpha
    if targets is not None:
        cfg.targets = targets
    return cfg


def adapted_model(cfg, params, lcfg, seed=0, b_scale=0.0):
    """(cfg with the LoRA scale, params with adapters); B random at b_scale (0: PEFT's zero)."""
    adapters = lora.init(lcfg, params, jax.random.key(seed))
    if b_scale:
        rng = np.random.default_rng(seed + 1)
        adapters = {
            k: jnp.asarray(rng.normal(0, b_scale, v.shape), jnp.float32)
            if k.endswith("lora_b")
            else v
            for k, v in adapters.items()
        }
    return dataclasses.replace(cfg, lora_scale=lora.scale(lcfg)), lora.with_adapters(
        params, adapters
    )


def small_model():
    cfg = tiny.tiny_config("qwen3", vocab_size=512)
    return cfg, init_params(cfg, jax.random.key(0))


def test_zero_b_is_the_base_model_exactly():
    cfg, params = small_model()
    tokens, mask = testing.left_padded_batch(0, batch=3, length=16, vocab=512, min_len=4)
    base = np.asarray(forward(cfg, params, tokens, mask).logits)
    acfg, adapted = adapted_model(cfg, params, lora_config())
    assert lora.adapted(adapted) and not lora.adapted(params)
    np.testing.assert_array_equal(np.asarray(forward(acfg, adapted, tokens, mask).logits), base)
    # The base view is the same arrays, not a copy.
    view = lora.base(adapted)
    assert all(a is b for a, b in zip(jax.tree.leaves(view), jax.tree.leaves(params)))


def test_adapters_every_target_and_only_targets():
    cfg, params = small_model()
    shapes = lora.adapter_shapes(lora_config(rank=3, targets=["q_proj", "down_proj"]), params)
    L, D, F = cfg.num_layers, cfg.hidden_size, cfg.intermediate_size
    assert shapes == {
        "layers/attn/q_proj/lora_a": jax.ShapeDtypeStruct((L, D, 3), jnp.float32),
        "layers/attn/q_proj/lora_b": jax.ShapeDtypeStruct(
            (L, 3, cfg.num_heads * cfg.head_dim), jnp.float32
        ),
        "layers/mlp/down_proj/lora_a": jax.ShapeDtypeStruct((L, F, 3), jnp.float32),
        "layers/mlp/down_proj/lora_b": jax.ShapeDtypeStruct((L, 3, D), jnp.float32),
    }
    default = lora.adapter_shapes(lora_config(), params)
    assert len(default) == 2 * 7  # q, k, v, o, gate, up, down


@pytest.fixture(scope="module", params=testing.FAMILIES)
def checkpoint(request, tmp_path_factory):
    path = str(tmp_path_factory.mktemp(request.param))
    return request.param, path, testing.make_torch_checkpoint(request.param, path, seed=1)


def peft_model(torch_model, cfg, policy, lcfg, directory):
    """PEFT's LoRA model on `torch_model` with our adapters, through PEFT's own loader."""
    tensors, config = lora.peft_files(cfg, policy, lcfg)
    save_file(tensors, f"{directory}/adapter_model.safetensors")
    with open(f"{directory}/adapter_config.json", "w") as f:
        json.dump(config, f)
    return peft.PeftModel.from_pretrained(torch_model, str(directory)).eval()


def test_adapted_logits_match_peft(checkpoint, tmp_path):
    family, path, torch_model = checkpoint
    ours = load_hf(path)
    lcfg = lora_config(rank=4, alpha=8.0)
    cfg, policy = adapted_model(ours.cfg, ours.params, lcfg, b_scale=0.05)
    tokens, mask = testing.left_padded_batch(0, batch=3, length=20, vocab=512, min_len=5)
    logits = np.asarray(forward(cfg, policy, tokens, mask).logits)
    base = np.asarray(forward(ours.cfg, ours.params, tokens, mask).logits)
    ref = testing.torch_logits(peft_model(torch_model, cfg, policy, lcfg, tmp_path), tokens, mask)
    valid = mask.astype(bool)
    scale = np.abs(ref[valid]).max()
    assert np.abs(base[valid] - ref[valid]).max() > 100 * 1e-4 * scale  # the adapters matter
    assert np.abs(logits[valid] - ref[valid]).max() <= 1e-4 * scale, family
    # Folded into the kernels, the same function.
    merged = np.asarray(forward(ours.cfg, lora.merged(policy, cfg.lora_scale), tokens, mask).logits)
    assert np.abs(merged[valid] - ref[valid]).max() <= 1e-4 * scale, family


def test_split_and_join():
    cfg, params = small_model()
    _, policy = adapted_model(cfg, params, lora_config())
    state = {"policy": policy, "logz_head": {"w": jnp.ones(3)}}
    trainable, frozen = lora.split(state)
    assert set(lora.flat(trainable["policy"])) == set(lora.adapter_shapes(lora_config(), params))
    assert "logz_head" in trainable and set(frozen) == {"policy"}
    assert not lora.adapted(frozen["policy"])
    joined = lora.join(trainable, frozen)
    assert jax.tree.structure(joined) == jax.tree.structure(state)
    assert lora.split({"policy": params}) == ({"policy": params}, None)


def test_adapters_shard_as_their_kernel():
    cfg, params = small_model()
    _, policy = adapted_model(cfg, params, lora_config())
    specs = partition.match(partition.rules_for(cfg.family), policy)
    attn, mlp = specs["layers"]["attn"], specs["layers"]["mlp"]
    assert attn["q_proj"]["kernel"] == P(None, "fsdp", "tensor")
    assert attn["q_proj"]["lora_a"] == P(None, "fsdp", None)
    assert attn["q_proj"]["lora_b"] == P(None, None, "tensor")
    assert mlp["down_proj"]["lora_a"] == P(None, "tensor", None)
    assert mlp["down_proj"]["lora_b"] == P(None, None, "fsdp")


@pytest.mark.parametrize(
    "targets, message",
    [
        (["nothing_here"], "matches no parameter"),
        (["embed"], "embed/embedding, which the adapters cannot sit on"),
        (["q_norm"], "cannot sit on"),
        (["lm_head"], "cannot sit on"),
        (["(unclosed"], "is not a regex"),
        ([], "non-empty list"),
    ],
)
def test_bad_targets(targets, message):
    _, params = small_model()
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        lora.targets(lora_config(targets=targets), params)


def test_rank_wider_than_a_layer():
    cfg, params = small_model()
    width = min(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim)
    with pytest.raises(ValueError, match=f"lora.rank={width + 1} exceeds"):
        lora.targets(lora_config(rank=width + 1), params)


def test_adapters_without_a_scale_are_refused():
    cfg, params = small_model()
    _, policy = adapted_model(cfg, params, lora_config())
    tokens = np.ones((1, 4), np.int32)
    with pytest.raises(ValueError, match="lora_scale is 0"):
        forward(cfg, policy, tokens, tokens)


def test_dropout_only_in_a_forward_given_a_key_and_unbiased():
    """LoRA dropout drops the adapter's input (PEFT's place) where the forward has a "dropout"
    key (the update's), never in sampling or scoring; scaled by 1 / (1 - p), its mean over
    masks is the forward without it."""
    cfg, params = small_model()
    acfg, adapted = adapted_model(cfg, params, lora_config(), b_scale=0.2)
    dropping = acfg.replace(lora_dropout=0.5)
    tokens, mask = testing.left_padded_batch(0, batch=2, length=8, vocab=512, min_len=4)
    plain = np.asarray(forward(acfg, adapted, tokens, mask).logits)
    np.testing.assert_array_equal(
        np.asarray(forward(dropping, adapted, tokens, mask).logits), plain
    )
    once = lambda key: forward(dropping, adapted, tokens, mask, dropout=key).logits
    a, b = np.asarray(once(jax.random.key(1))), np.asarray(once(jax.random.key(2)))
    assert not np.allclose(a, plain) and not np.allclose(a, b)
    np.testing.assert_array_equal(np.asarray(once(jax.random.key(1))), a)  # a key's own mask
    # One projection is linear in the mask: its mean over 2,000 masks is the plain output.
    from flowrl_jax.models.decoder import Linear

    rng = np.random.default_rng(0)
    weights = {
        "kernel": rng.normal(size=(16, 8)).astype(np.float32),
        "lora_a": rng.normal(size=(16, 4)).astype(np.float32),
        "lora_b": rng.normal(size=(4, 8)).astype(np.float32),
    }
    x = rng.normal(size=(3, 16)).astype(np.float32)
    layer = Linear(8, False, jnp.float32, jnp.float32, lora_scale=2.0, lora_dropout=0.5)
    run = lambda key: layer.apply({"params": weights}, x, rngs={"dropout": key})
    many = np.asarray(jax.jit(jax.vmap(run))(jax.random.split(jax.random.key(3), 2000)))
    expected = x @ weights["kernel"] + 2.0 * (x @ weights["lora_a"]) @ weights["lora_b"]
    np.testing.assert_allclose(np.asarray(layer.apply({"params": weights}, x)), expected, rtol=1e-5)
    error = np.abs(many.mean(0) - expected) / (many.std(0) / np.sqrt(2000))
    assert many.std(0).min() > 0.1 and error.max() < 5  # within 5 standard errors
