"""Our decoder against `transformers` (torch, fp32) on tiny random checkpoints of each family."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from flowrl_jax import testing  # noqa: E402
from flowrl_jax.models import load_hf, save_hf  # noqa: E402


def rel_err(ours, ref, mask):
    """max |ours - ref| over real (non-pad) positions, relative to the reference logit scale."""
    valid = mask.astype(bool)
    return np.abs(ours[valid] - ref[valid]).max() / np.abs(ref[valid]).max()


@pytest.fixture(scope="module", params=testing.FAMILIES)
def checkpoint(request, tmp_path_factory):
    path = str(tmp_path_factory.mktemp(request.param))
    return request.param, path, testing.make_torch_checkpoint(request.param, path, seed=1)


def test_logits_match_torch_with_left_padding(checkpoint):
    family, path, torch_model = checkpoint
    tokens, mask = testing.left_padded_batch(0, batch=4, length=24, vocab=512, min_len=5)
    ours = np.asarray(load_hf(path)(tokens, mask))
    ref = testing.torch_logits(torch_model, tokens, mask)
    assert ours.shape == ref.shape
    assert np.abs(ref[mask.astype(bool)]).max() > 1.0  # a real logit scale, not ~0
    assert rel_err(ours, ref, mask) <= 1e-4, family


def test_greedy_kv_cache_matches_torch_generate(checkpoint):
    family, path, torch_model = checkpoint
    tokens, mask = testing.left_padded_batch(1, batch=4, length=12, vocab=512, min_len=4)
    ours = load_hf(path).generate_greedy(tokens, mask, steps=32)
    with torch.no_grad():
        out = torch_model.generate(
            input_ids=torch.tensor(tokens, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            max_new_tokens=32,
            min_new_tokens=32,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    ref = out[:, tokens.shape[1] :].numpy()
    np.testing.assert_array_equal(ours, ref, err_msg=family)


def test_export_reloads_in_torch_with_same_logits(checkpoint, tmp_path):
    import transformers

    family, path, torch_model = checkpoint
    model = load_hf(path)
    out = save_hf(model, str(tmp_path / "export"))
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(
        out, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    tokens, mask = testing.left_padded_batch(2, batch=3, length=16, vocab=512)
    ref = testing.torch_logits(torch_model, tokens, mask)
    np.testing.assert_allclose(testing.torch_logits(reloaded, tokens, mask), ref, rtol=0, atol=1e-6)
    # And back into JAX from our own export.
    assert rel_err(np.asarray(load_hf(out)(tokens, mask)), ref, mask) <= 1e-4


def test_sharded_export_writes_an_index(checkpoint, tmp_path):
    import json
    import os

    _, path, torch_model = checkpoint
    out = save_hf(load_hf(path), str(tmp_path / "multi"), max_shard_bytes=100_000)
    files = sorted(f for f in os.listdir(out) if f.endswith(".safetensors"))
    assert len(files) > 1
    with open(os.path.join(out, "model.safetensors.index.json")) as f:
        assert set(json.load(f)["weight_map"].values()) == set(files)
    tokens, mask = testing.left_padded_batch(3, batch=2, length=8, vocab=512)
    ref = testing.torch_logits(torch_model, tokens, mask)
    assert rel_err(np.asarray(load_hf(out)(tokens, mask)), ref, mask) <= 1e-4
