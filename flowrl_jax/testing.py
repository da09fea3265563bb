"""Testing helpers (temporary header)."""

from __future__ import annotations

import numpy as np


# --- tiny models ---
# One tiny config per family, shaped to exercise what differs between them: Qwen2 q/k/v biases and
# tied embeddings, Qwen3 q/k norms, Llama 3.1 rope scaling (all three frequency bands: with
# head_dim 16 and original_max_position_embeddings 32 some wavelengths are kept, some stretched,
# some interpolated).
_TINY_COMMON = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6,
                    max_position_embeddings=128, bos_token_id=None, eos_token_id=2, pad_token_id=0)
TINY_HF_CONFIGS = {
    "qwen2": dict(_TINY_COMMON, model_type="qwen2", rope_theta=10000.0, tie_word_embeddings=True),
    "qwen3": dict(_TINY_COMMON, model_type="qwen3", rope_theta=1000000.0,
                  tie_word_embeddings=False, attention_bias=False),
    "llama": dict(_TINY_COMMON, model_type="llama", rope_theta=500000.0, tie_word_embeddings=False,
                  rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                    high_freq_factor=4.0, original_max_position_embeddings=32)),
}
FAMILIES = tuple(TINY_HF_CONFIGS)


def tiny_config(family: str, **overrides):
    """Our DecoderConfig for the tiny model of `family`."""
    from flowrl_jax.models.families import config_from_hf

    return config_from_hf(TINY_HF_CONFIGS[family], **overrides)


def make_torch_checkpoint(family: str, path: str, seed: int = 0, scale: float = 0.1, **hf_overrides):
    """A `transformers` model of the tiny `family` config with every parameter random (norm scales
    around 1, biases non-zero, so a mis-mapped tensor cannot hide behind its default init), saved
    with `save_pretrained(path)`. Returns the torch model (eval mode, fp32). Needs torch."""
    import torch
    import transformers

    hf = dict(TINY_HF_CONFIGS[family], **hf_overrides)
    model_type = hf.pop("model_type")
    config = transformers.AutoConfig.for_model(model_type, **hf)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    model = model.float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn_like(p) * scale
            p.copy_(1.0 + noise if name.endswith("norm.weight") else noise)
    model.save_pretrained(path)
    return model


def left_padded_batch(seed: int, batch: int, length: int, vocab: int, min_len: int = 1):
    """Random token ids [B, T] with random left padding (row 0 unpadded) and its mask."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, vocab, size=(batch, length)).astype(np.int32)
    lengths = rng.integers(min_len, length + 1, size=batch)
    lengths[0] = length
    mask = (np.arange(length)[None, :] >= (length - lengths)[:, None]).astype(np.int32)
    return np.where(mask == 1, tokens, 0).astype(np.int32), mask
