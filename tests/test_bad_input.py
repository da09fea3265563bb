"""Bad checkpoints and configs fail with an error that names the problem."""

import json
import os

import pytest

from flowrl_jax import testing
from flowrl_jax.models import DecoderConfig, load_hf, safetensors_file
from flowrl_jax.models.families import config_from_hf

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def sharded_checkpoint(tmp_path_factory):
    """A two-shard Llama checkpoint (written by transformers, with an index)."""
    model = testing.make_torch_checkpoint("llama", str(tmp_path_factory.mktemp("single")))
    path = str(tmp_path_factory.mktemp("llama"))
    model.save_pretrained(path, max_shard_size="100KB")
    assert os.path.isfile(os.path.join(path, "model.safetensors.index.json"))
    return path


def copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return str(dst)


def test_missing_shard_file(sharded_checkpoint, tmp_path):
    path = copy(sharded_checkpoint, tmp_path / "ckpt")
    shard = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))[-1]
    assert shard.startswith("model-000")
    os.remove(os.path.join(path, shard))
    with pytest.raises(FileNotFoundError, match=f"shard {shard} listed in .* is missing"):
        load_hf(path)


def test_no_weights_at_all(tmp_path):
    with open(tmp_path / "config.json", "w") as f:
        json.dump(testing.TINY_HF_CONFIGS["qwen3"], f)
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_hf(str(tmp_path))


def test_no_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_hf(str(tmp_path))


def test_truncated_shard(sharded_checkpoint, tmp_path):
    path = copy(sharded_checkpoint, tmp_path / "ckpt")
    shard = os.path.join(path, sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))[0])
    size = os.path.getsize(shard)
    with open(shard, "r+b") as f:
        f.truncate(size - 1000)
    with pytest.raises(ValueError, match="is truncated: tensor"):
        load_hf(path)


def rewrite_config(path, **changes):
    file = os.path.join(path, "config.json")
    with open(file) as f:
        hf = json.load(f)
    hf.update(changes)
    with open(file, "w") as f:
        json.dump(hf, f)


def test_key_map_mismatch_names_the_keys(sharded_checkpoint, tmp_path):
    # The config says 3 layers, the weights hold 2: layer 2's tensors are missing.
    path = copy(sharded_checkpoint, tmp_path / "ckpt")
    rewrite_config(path, num_hidden_layers=3)
    with pytest.raises(ValueError, match=r"missing \['model.layers.2.input_layernorm.weight'"):
        load_hf(path)


def test_unexpected_key_is_named(tmp_path):
    path = str(tmp_path)
    testing.make_torch_checkpoint("qwen3", path)
    # Qwen3 with attention_bias=true expects q/k/v/o biases the file lacks; the inverse (a qwen3
    # file read as llama) has q_norm/k_norm tensors the llama map does not know.
    rewrite_config(path, model_type="llama")
    with pytest.raises(ValueError, match=r"unexpected \['model.layers.0.self_attn.k_norm.weight'"):
        load_hf(path)


def test_shape_mismatch_names_the_key(tmp_path):
    path = str(tmp_path)
    testing.make_torch_checkpoint("qwen2", path)
    rewrite_config(path, intermediate_size=96)
    with pytest.raises(
        ValueError,
        match=r"'model.layers.0.mlp.gate_proj.weight' has shape "
        r"\(128, 64\), expected \(96, 64\)",
    ):
        load_hf(path)


def test_corrupt_header(tmp_path):
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(ValueError, match="is not a readable safetensors file"):
        safetensors_file.SafetensorsFile(str(file))


def test_heads_not_divisible_by_kv_heads():
    hf = dict(testing.TINY_HF_CONFIGS["qwen3"], num_attention_heads=6, num_key_value_heads=4)
    with pytest.raises(
        ValueError,
        match=r"num_heads=6 \(num_attention_heads\) is not divisible by "
        r"num_kv_heads=4 \(num_key_value_heads\)",
    ):
        config_from_hf(hf)


def test_unsupported_features_are_named():
    with pytest.raises(ValueError, match="model_type='gpt2' is not supported"):
        config_from_hf(dict(testing.TINY_HF_CONFIGS["qwen3"], model_type="gpt2"))
    with pytest.raises(NotImplementedError, match="rope_type='yarn'"):
        config_from_hf(
            dict(
                testing.TINY_HF_CONFIGS["llama"], rope_scaling={"rope_type": "yarn", "factor": 4.0}
            )
        )
    with pytest.raises(NotImplementedError, match="use_sliding_window"):
        config_from_hf(dict(testing.TINY_HF_CONFIGS["qwen2"], use_sliding_window=True))
    with pytest.raises(ValueError, match="remat='some'"):
        DecoderConfig("qwen3", 8, 8, 8, 1, 2, 1, 4, remat="some")


def test_config_placeholder_and_unknown_task(tmp_path):
    from flowrl_jax import tasks
    from flowrl_jax.config import base_config
    from flowrl_jax.models import from_config

    config = base_config()
    config.model.checkpoint = "/path/to/Qwen/Qwen2.5-7B"
    with pytest.raises(ValueError, match="still the config's placeholder; pass --config.model"):
        from_config.model_config(config.model)
    with pytest.raises(ValueError, match=r"task.name='gsm9k' is not a known task; known: \["):
        tasks.get("gsm9k")
