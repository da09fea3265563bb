"""Decoder models: our Flax decoder, HF checkpoint I/O and partition rules."""

from flowrl_jax.models import partition, safetensors_file
from flowrl_jax.models.decoder import (
    Decoder,
    DecoderOutput,
    init_cache,
    init_params,
    param_shapes,
    positions_from_mask,
)
from flowrl_jax.models.families import (
    KNOWN_SHAPES,
    DecoderConfig,
    config_from_hf,
    config_to_hf,
    known_config,
)
from flowrl_jax.models.hf_io import key_map, load_hf, load_tokenizer, save_hf
from flowrl_jax.models.model import Model, forward, greedy_generate

__all__ = [
    "KNOWN_SHAPES",
    "Decoder",
    "DecoderConfig",
    "DecoderOutput",
    "Model",
    "config_from_hf",
    "config_to_hf",
    "forward",
    "greedy_generate",
    "init_cache",
    "init_params",
    "key_map",
    "known_config",
    "load_hf",
    "load_tokenizer",
    "param_shapes",
    "partition",
    "positions_from_mask",
    "safetensors_file",
    "save_hf",
]
