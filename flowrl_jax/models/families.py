"""Decoder configuration and its mapping from/to Hugging Face `config.json`.

One frozen dataclass describes every family we support (Qwen2 / Qwen2.5, Qwen3, Llama 3 / 3.1); the
families differ only in a few switches (q/k/v bias, q/k RMSNorm, RoPE scaling). The dataclass is
hashable, so it can be a static argument of a jitted function.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

FAMILIES = ("qwen2", "qwen3", "llama")
ROPE_TYPES = ("default", "linear", "llama3")
REMAT_POLICIES = ("none", "full", "dots")
ATTENTION = ("auto", "xla", "cudnn", "splash")  # see DecoderConfig.attention
DECODE_ATTENTION = ("auto", "xla", "pallas_gpu", "pallas_tpu")  # DecoderConfig.decode_attention
HALF = ("bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    family: str
    vocab_size: int
    hidden_size: int  # D
    intermediate_size: int  # F, the SwiGLU width
    num_layers: int  # L
    num_heads: int  # H
    num_kv_heads: int  # K (GQA: each kv head serves H // K query heads)
    head_dim: int
    rope_theta: float = 10000.0
    # RoPE scaling as HF writes it: ('rope_type', 'factor', ...) pairs, kept as a sorted tuple so the
    # config stays hashable. Empty means plain RoPE.
    rope_scaling: tuple = ()
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    qkv_bias: bool = False  # Qwen2 has biases on q/k/v (not o); Llama/Qwen3 follow `attention_bias`
    o_bias: bool = False
    qk_norm: bool = False  # Qwen3: RMSNorm over head_dim on q and k before RoPE
    max_position_embeddings: int = 32768
    param_dtype: str = "float32"  # storage dtype of the parameters
    dtype: str = "float32"  # compute dtype of activations (softmax, norms and logits stay fp32)
    remat: str = "none"  # 'none' | 'full' | 'dots' (save matmul outputs, recompute the rest)
    # Queries per attention block: a forward over T > attention_block positions computes attention one
    # block of queries at a time (rematerialised), so the [T, S] scores never exist whole. 0 = never.
    attention_block: int = 512
    # A forward without a cache (log-probs, training) at T <= attention_block: queries per block,
    # each block attending only the keys up to its last query, so the scores above the causal
    # diagonal (all masked) are never computed. 0 = one block over all T x T scores.
    causal_block: int = 128
    # The slot sampler's decode step on the CPU: each row reads its cache only up to its last
    # filled slot, this many slots at a time (attention.ragged_decode). 0 = the whole window.
    decode_block: int = 128
    # Attention of a forward without a cache: 'xla' (attention.py), 'cudnn' (NVIDIA GPUs, bf16 /
    # fp16), 'splash' (the Pallas TPU kernel), or 'auto': by backend (models/kernels.py).
    attention: str = "auto"
    # The slot sampler's decode attention: 'xla' (on the CPU the ragged loop of `decode_block`,
    # elsewhere the whole window), 'pallas_gpu' / 'pallas_tpu' (Pallas kernels reading each row's
    # filled part; keys cached [.., S, Dh]; interpret mode on the CPU), or 'auto': by backend.
    decode_attention: str = "auto"
    # LoRA: the scale s = alpha / rank of the adapters where the parameter tree has them
    # (models/lora.py); 0 without LoRA.
    lora_scale: float = 0.0
    # LoRA dropout on the adapters' input, in a forward given a "dropout" key (the update's);
    # sampling and scoring run without one.
    lora_dropout: float = 0.0

    def __post_init__(self):
        check_config(self)

    @property
    def rope(self) -> dict:
        return dict(self.rope_scaling)

    def replace(self, **kw) -> DecoderConfig:
        return dataclasses.replace(self, **kw)


def check_config(cfg: DecoderConfig) -> None:
    """Invariants checked before anything is built; each message names the offending key."""
    if cfg.family not in FAMILIES:
        raise ValueError(f"family={cfg.family!r} is not supported; choose one of {FAMILIES}")
    for key in (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_layers",
        "num_heads",
        "num_kv_heads",
        "head_dim",
    ):
        if int(getattr(cfg, key)) < 1:
            raise ValueError(f"{key}={getattr(cfg, key)} must be a positive integer")
    if cfg.num_heads % cfg.num_kv_heads:
        raise ValueError(
            f"num_heads={cfg.num_heads} (num_attention_heads) is not divisible by "
            f"num_kv_heads={cfg.num_kv_heads} (num_key_value_heads): grouped-query attention needs "
            "every kv head to serve the same number of query heads"
        )
    if cfg.head_dim % 2:
        raise ValueError(f"head_dim={cfg.head_dim} must be even for rotary embeddings")
    rope_type = cfg.rope.get("rope_type", "default")
    if rope_type not in ROPE_TYPES:
        raise NotImplementedError(
            f"rope_scaling.rope_type={rope_type!r} is not implemented; supported: {ROPE_TYPES}"
        )
    for key in ("attention_block", "causal_block", "decode_block"):
        if getattr(cfg, key) < 0:
            raise ValueError(f"{key}={getattr(cfg, key)} must be >= 0 (0 = unblocked)")
    if cfg.attention not in ATTENTION:
        raise ValueError(f"attention={cfg.attention!r} must be one of {ATTENTION}")
    if cfg.decode_attention not in DECODE_ATTENTION:
        raise ValueError(
            f"decode_attention={cfg.decode_attention!r} must be one of {DECODE_ATTENTION}"
        )
    if cfg.attention == "cudnn" and cfg.dtype not in HALF:  # its flash kernel has no fp32
        raise ValueError(
            f"attention='cudnn' computes in bfloat16 or float16, not dtype={cfg.dtype!r}"
        )
    if cfg.lora_scale < 0:
        raise ValueError(f"lora_scale={cfg.lora_scale} must be >= 0 (lora.alpha / lora.rank)")
    if not 0.0 <= cfg.lora_dropout < 1.0:
        raise ValueError(f"lora_dropout={cfg.lora_dropout} must be in [0, 1)")
    if cfg.remat not in REMAT_POLICIES:
        raise ValueError(f"remat={cfg.remat!r} must be one of {REMAT_POLICIES}")
    for key in ("param_dtype", "dtype"):
        if getattr(cfg, key) not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"{key}={getattr(cfg, key)!r} must be float32, bfloat16 or float16")


_MODEL_TYPES = {"qwen2": "qwen2", "qwen3": "qwen3", "llama": "llama"}
_ARCHITECTURES = {
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "llama": "LlamaForCausalLM",
}


def _rope_from_hf(hf: dict) -> tuple[float, tuple]:
    """HF writes RoPE two ways: transformers<5 `rope_theta` + `rope_scaling`, transformers 5
    `rope_parameters` holding both. Published checkpoints use the first, re-saved ones the second."""
    params = dict(hf.get("rope_parameters") or {})
    scaling = dict(hf.get("rope_scaling") or {})
    theta = params.pop("rope_theta", hf.get("rope_theta", 10000.0))
    params.update(scaling)
    if "type" in params and "rope_type" not in params:  # very old spelling
        params["rope_type"] = params.pop("type")
    if params.get("rope_type", "default") == "default":
        params = {}
    return float(theta), tuple(sorted(params.items()))


def config_from_hf(hf: dict, **overrides) -> DecoderConfig:
    """Map a parsed HF `config.json` to DecoderConfig. Unsupported features raise, naming the key."""
    model_type = hf.get("model_type")
    if model_type not in _MODEL_TYPES:
        raise ValueError(
            f"config.json model_type={model_type!r} is not supported; "
            f"supported: {sorted(_MODEL_TYPES)}"
        )
    family = _MODEL_TYPES[model_type]
    if hf.get("use_sliding_window"):
        raise NotImplementedError("config.json use_sliding_window=true is not implemented")
    if hf.get("mlp_bias"):
        raise NotImplementedError("config.json mlp_bias=true is not implemented")
    if hf.get("hidden_act", "silu") != "silu":
        raise NotImplementedError(f"config.json hidden_act={hf['hidden_act']!r}: only silu")
    heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
    theta, scaling = _rope_from_hf(hf)
    attention_bias = bool(hf.get("attention_bias", False))
    kw: dict[str, Any] = dict(
        family=family,
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=head_dim,
        rope_theta=theta,
        rope_scaling=scaling,
        rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        qkv_bias=True if family == "qwen2" else attention_bias,
        o_bias=False if family == "qwen2" else attention_bias,
        qk_norm=family == "qwen3",
        max_position_embeddings=hf.get("max_position_embeddings", 32768),
    )
    kw.update(overrides)
    return DecoderConfig(**kw)


def config_to_hf(cfg: DecoderConfig, base: dict | None = None) -> dict:
    """HF `config.json` for cfg. `base` (the loaded checkpoint's own config) keeps the keys we do not
    model, such as token ids and the chat-relevant generation fields."""
    hf = dict(base or {})
    hf.pop("rope_scaling", None)
    rope = {"rope_theta": cfg.rope_theta, "rope_type": "default", **cfg.rope}
    hf.update(
        model_type=_MODEL_TYPES[cfg.family],
        architectures=[_ARCHITECTURES[cfg.family]],
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim,
        hidden_act="silu",
        rope_theta=cfg.rope_theta,  # transformers<5 readers
        rope_parameters=rope,  # transformers 5 readers
        rms_norm_eps=cfg.rms_norm_eps,
        tie_word_embeddings=cfg.tie_word_embeddings,
        max_position_embeddings=cfg.max_position_embeddings,
        dtype=cfg.param_dtype,
    )
    if cfg.family != "qwen2":
        hf["attention_bias"] = cfg.qkv_bias
    return hf


def read_hf_config(path: str | os.PathLike) -> dict:
    file = os.path.join(path, "config.json")
    if not os.path.isfile(file):
        raise FileNotFoundError(f"no config.json in checkpoint directory {path}")
    with open(file) as f:
        return json.load(f)


# Published shapes, for abstract (eval_shape) checks and memory analyses. Values copied from the
# models' config.json on the Hugging Face hub. `params` is the published parameter count: the hub's
# count for the checkpoint (for sharded ones, model.safetensors.index.json's total_size / 2 bytes per
# bf16 value). The model cards round these (0.49B, 7.61B, 32.5B).
KNOWN_SHAPES = {
    "qwen2.5-0.5b": dict(
        hf=dict(
            model_type="qwen2",
            vocab_size=151936,
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            rope_theta=1000000.0,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            max_position_embeddings=32768,
        ),
        params=494_032_768,
    ),
    "qwen2.5-1.5b": dict(
        hf=dict(
            model_type="qwen2",
            vocab_size=151936,
            hidden_size=1536,
            intermediate_size=8960,
            num_hidden_layers=28,
            num_attention_heads=12,
            num_key_value_heads=2,
            rope_theta=1000000.0,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            max_position_embeddings=32768,
        ),
        params=1_543_714_304,
    ),
    "qwen2.5-7b": dict(
        hf=dict(
            model_type="qwen2",
            vocab_size=152064,
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            rope_theta=1000000.0,
            rms_norm_eps=1e-6,
            tie_word_embeddings=False,
            max_position_embeddings=131072,
        ),
        params=7_615_616_512,
    ),
    "qwen2.5-32b": dict(
        hf=dict(
            model_type="qwen2",
            vocab_size=152064,
            hidden_size=5120,
            intermediate_size=27648,
            num_hidden_layers=64,
            num_attention_heads=40,
            num_key_value_heads=8,
            rope_theta=1000000.0,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            max_position_embeddings=131072,
        ),
        params=32_763_876_352,
    ),
    "qwen3-8b": dict(
        hf=dict(
            model_type="qwen3",
            vocab_size=151936,
            hidden_size=4096,
            intermediate_size=12288,
            num_hidden_layers=36,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
            rope_theta=1000000.0,
            rms_norm_eps=1e-6,
            tie_word_embeddings=False,
            attention_bias=False,
            max_position_embeddings=40960,
        ),
        params=8_190_735_360,
    ),
    "llama-3.1-8b": dict(
        hf=dict(
            model_type="llama",
            vocab_size=128256,
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            rope_theta=500000.0,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            attention_bias=False,
            max_position_embeddings=131072,
            rope_scaling=dict(
                rope_type="llama3",
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=8192,
            ),
        ),
        params=8_030_261_248,
    ),
}


def known_config(name: str, **overrides) -> DecoderConfig:
    if name not in KNOWN_SHAPES:
        raise KeyError(f"unknown model shape {name!r}; known: {sorted(KNOWN_SHAPES)}")
    return config_from_hf(KNOWN_SHAPES[name]["hf"], **overrides)
