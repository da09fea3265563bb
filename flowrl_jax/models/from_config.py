"""Build the policy model and tokenizer that `config.model` names, placed on the mesh."""

from __future__ import annotations

import dataclasses
import logging

import jax
from jax.sharding import Mesh
from ml_collections import ConfigDict

from flowrl_jax import rules as R
from flowrl_jax.models import kernels, partition
from flowrl_jax.models.decoder import init_params
from flowrl_jax.models.families import (
    ATTENTION,
    DECODE_ATTENTION,
    FAMILIES,
    REMAT_POLICIES,
    DecoderConfig,
    config_from_hf,
    read_hf_config,
)
from flowrl_jax.models.hf_io import DTYPES, load_hf, load_tokenizer
from flowrl_jax.models.model import Model

log = logging.getLogger(__name__)


def default_config() -> ConfigDict:
    return ConfigDict(
        {
            # A local HF checkpoint directory (config.json + *.safetensors). Empty: a tiny random model
            # of `tiny_family` with a tokenizer built on the spot, so the job runs with no download.
            "checkpoint": "",
            "tokenizer": "",  # a local HF tokenizer directory; empty: the checkpoint's own
            "tiny_family": "qwen3",
            # The tiny model's width and depth; 0 = the test suite's shape (64 wide, 2 layers).
            "tiny_hidden_size": 0,
            "tiny_layers": 0,
            "dtype": "float32",  # compute dtype; bfloat16 on accelerators
            "param_dtype": "",  # storage dtype; empty: same as dtype
            "remat": "none",  # 'none' | 'full' | 'dots'
            # Blocking of attention, DecoderConfig's defaults (its comments say what each does):
            # queries per block at long T, queries per causal block at short T, and the slots
            # the slot sampler's decode on the CPU reads at a time up to each row's fill.
            "attention_block": DecoderConfig.attention_block,
            "causal_block": DecoderConfig.causal_block,
            "decode_block": DecoderConfig.decode_block,
            # Attention without a cache: 'auto' (cuDNN on a GPU in bf16, splash on a TPU, XLA on
            # the CPU), or one of 'xla', 'cudnn', 'splash' (models/kernels.py).
            "attention": DecoderConfig.attention,
            # The slot sampler's decode attention: 'auto' (a Pallas kernel on a GPU or TPU, XLA
            # on the CPU), 'xla', 'pallas_gpu' or 'pallas_tpu' (models/kernels.py).
            "decode_attention": DecoderConfig.decode_attention,
        }
    )


RULES = {
    "tiny_family": R.OneOf(FAMILIES),
    "tiny_hidden_size": R.COUNT,
    "tiny_layers": R.COUNT,
    "dtype": R.OneOf(tuple(DTYPES), fold_case=True),
    "param_dtype": R.OneOf(("", *DTYPES), fold_case=True),
    "remat": R.OneOf(REMAT_POLICIES),
    "attention_block": R.COUNT,
    "causal_block": R.COUNT,
    "decode_block": R.COUNT,
    "attention": R.OneOf(ATTENTION),
    "decode_attention": R.OneOf(DECODE_ATTENTION),
}


def overrides(config: ConfigDict) -> dict:
    """config.model's settings that shape the DecoderConfig beside the checkpoint's own."""
    return dict(
        dtype=config.dtype,
        param_dtype=config.param_dtype or config.dtype,
        remat=config.remat,
        attention_block=config.attention_block,
        causal_block=config.causal_block,
        decode_block=config.decode_block,
        attention=config.attention,
        decode_attention=config.decode_attention,
    )


def model_config(config: ConfigDict):
    """-> (DecoderConfig, tokenizer) without reading or building any weights."""
    if config.checkpoint.startswith("/path/to/"):  # the shipped configs' placeholder
        raise ValueError(
            f"model.checkpoint={config.checkpoint!r} is still the config's placeholder; pass "
            "--config.model.checkpoint=DIR (a local Hugging Face checkpoint directory)"
        )
    if config.checkpoint:
        cfg = config_from_hf(read_hf_config(config.checkpoint), **overrides(config))
        return cfg, load_tokenizer(config.tokenizer or config.checkpoint)
    from flowrl_jax.models import tiny

    # Built in a directory of this process's own, never in the workdir: checks and readers (export,
    # evaluate) write nothing there, and a job refused by another's lock has touched none of it.
    tokenizer = load_tokenizer(config.tokenizer or tiny.tiny_tokenizer_dir())
    cfg = tiny.tiny_config(config.tiny_family, vocab_size=len(tokenizer), **overrides(config))
    shape = {}
    if config.tiny_hidden_size:  # 4 heads (2 for keys and values), the MLP twice as wide
        D = config.tiny_hidden_size
        shape = dict(hidden_size=D, intermediate_size=2 * D, head_dim=D // cfg.num_heads)
    if config.tiny_layers:
        shape["num_layers"] = config.tiny_layers
    return dataclasses.replace(cfg, **shape), tokenizer


def build(config: ConfigDict, mesh: Mesh, seed: int = 0):
    """-> (Model on `mesh`, tokenizer)."""
    for choice in (config.attention, config.decode_attention):  # before anything compiles
        kernels.check(choice)
    if config.checkpoint:
        model = load_hf(config.checkpoint, mesh=mesh, **overrides(config))
        tokenizer = load_tokenizer(config.tokenizer or config.checkpoint)
        return model, tokenizer
    cfg, tokenizer = model_config(config)
    shardings = partition.shardings(
        partition.rules_for(cfg.family),
        jax.eval_shape(lambda: init_params(cfg, jax.random.key(0))),
        mesh,
    )
    params = jax.jit(init_params, static_argnums=0, out_shardings=shardings)(
        cfg, jax.random.key(seed)
    )
    log.info(
        "tiny random %s model, %d parameters",
        cfg.family,
        sum(x.size for x in jax.tree.leaves(params)),
    )
    return Model(cfg, params, mesh=mesh), tokenizer
