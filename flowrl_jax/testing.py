"""Helpers for the tests: the tiny models (re-exported from models/tiny.py, which production uses),
random `transformers` checkpoints saved locally, random padded batches. Nothing here downloads
anything; nothing outside tests imports this module."""

from __future__ import annotations

import numpy as np

from flowrl_jax.models.tiny import (  # noqa: F401 -- re-exported for the tests
    BENCH_HF_CONFIGS,
    CHAT_TEMPLATE,
    FAMILIES,
    SPECIAL_TOKENS,
    TINY_HF_CONFIGS,
    make_tiny_tokenizer,
    tiny_config,
    tiny_corpus,
)


def make_torch_checkpoint(
    family: str, path: str, seed: int = 0, scale: float = 0.1, **hf_overrides
):
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


def torch_logits(model, tokens, mask) -> np.ndarray:
    """A torch causal LM's logits (fp32 numpy) with mask-derived positions, as our decoder and
    `generate()` use them. tokens, mask [B, T] (left padding)."""
    import torch

    ids, m = torch.tensor(tokens, dtype=torch.long), torch.tensor(mask, dtype=torch.long)
    positions = (m.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=m, position_ids=positions).logits.numpy()


def left_padded_batch(seed: int, batch: int, length: int, vocab: int, min_len: int = 1):
    """Random token ids [B, T] with random left padding (row 0 unpadded) and its mask."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, vocab, size=(batch, length)).astype(np.int32)
    lengths = rng.integers(min_len, length + 1, size=batch)
    lengths[0] = length
    mask = (np.arange(length)[None, :] >= (length - lengths)[:, None]).astype(np.int32)
    return np.where(mask == 1, tokens, 0).astype(np.int32), mask
