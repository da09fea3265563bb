"""The SFT loss (issue #19, first part): equal to `transformers`' causal-LM loss with the prompt and
padding labels at -100, loss and gradient, on the same local HF checkpoint (torch, fp32); and a few
optimiser steps on a handful of rows drive their loss near zero."""

import jax
import numpy as np
import optax
import pytest
from safetensors.numpy import load_file

from flowrl_jax import testing
from flowrl_jax.models import Model, load_hf, save_hf
from flowrl_jax.trainer import demonstrations, sft

torch = pytest.importorskip("torch")


def rows(seed, vocab):
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(3, vocab, n).tolist() for n in (4, 2, 6)]
    responses = [rng.integers(3, vocab, n).tolist() for n in (5, 8, 3)]
    return prompts, responses


def test_sft_loss_and_gradient_equal_transformers(tmp_path):
    ckpt = str(tmp_path / "ckpt")
    reference = testing.make_torch_checkpoint("qwen3", ckpt, seed=1)
    model = load_hf(ckpt)
    prompts, responses = rows(0, model.cfg.vocab_size)
    tokens, mask, loss_mask = sft.batch(prompts, responses, length=12)
    labels = np.where(loss_mask == 1, tokens, -100)
    out = reference(
        input_ids=torch.tensor(tokens, dtype=torch.long),
        attention_mask=torch.tensor(mask, dtype=torch.long),
        labels=torch.tensor(labels, dtype=torch.long),
    )
    out.loss.backward()

    def ours(params):
        return sft.loss(model.cfg, params, tokens, mask, loss_mask, chunk=5)[0]

    value, grads = jax.jit(jax.value_and_grad(ours))(model.params)
    np.testing.assert_allclose(float(value), out.loss.item(), rtol=1e-5, atol=1e-6)
    # Our gradient in HF names and layouts: written as a checkpoint by the exporter.
    save_hf(Model(model.cfg, grads), str(tmp_path / "grads"))
    ours_by_name = load_file(str(tmp_path / "grads" / "model.safetensors"))
    named = dict(reference.named_parameters())
    assert set(ours_by_name) == set(named)
    for name, p in named.items():
        np.testing.assert_allclose(ours_by_name[name], p.grad.numpy(), atol=1e-5, err_msg=name)


def test_a_few_steps_drive_a_handful_of_rows_to_near_zero_loss():
    cfg = testing.tiny_config("qwen3", vocab_size=64)
    params = Model.random(cfg, seed=0).params
    prompts, responses = rows(1, 64)
    tokens, mask, loss_mask = sft.batch(prompts, responses, length=12)
    optimizer = optax.adam(1e-2)
    state = optimizer.init(params)

    @jax.jit
    def step(params, state):
        value, grads = jax.value_and_grad(lambda p: sft.loss(cfg, p, tokens, mask, loss_mask)[0])(
            params
        )
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value

    first = None
    for _ in range(60):
        params, state, value = step(params, state)
        first = float(value) if first is None else first
    final = float(sft.loss(cfg, params, tokens, mask, loss_mask)[0])
    assert first > 3.0 and final < 0.05, (first, final)


def test_bad_rows_are_refused():
    with pytest.raises(ValueError, match=r"row 0: 7 tokens \(prompt 3 \+ response 4\) > 6"):
        sft.batch([[1, 2, 3]], [[4, 5, 6, 7]], length=6)
    with pytest.raises(ValueError, match="row 0: an empty response"):
        sft.batch([[1, 2, 3]], [[]], length=6)


def write_jsonl(path, rows):
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_demonstration_files_are_checked_row_by_row(tmp_path, caplog):
    from flowrl_jax.models import load_tokenizer
    from flowrl_jax.tasks import DataError

    good = [
        {"q": "1 + 1?", "a": "2"},
        {
            "messages": [
                {"role": "user", "content": "3 + 4?"},
                {"role": "assistant", "content": "7"},
            ]
        },
        {"q": "a very long question " * 20, "a": "x"},
    ]
    path = write_jsonl(tmp_path / "sft.jsonl", good)
    rows = demonstrations.load(path, {"prompt": "q", "response": "a"})
    assert [r["response"] for r in rows] == ["2", "7", "x"]
    assert rows[1]["messages"] == [{"role": "user", "content": "3 + 4?"}]
    tokenizer = load_tokenizer(testing.make_tiny_tokenizer(str(tmp_path / "tok")))
    with caplog.at_level("WARNING"):
        encoded = demonstrations.encode(rows, tokenizer, max_len=64)
    responses, sources = encoded.responses, encoded.sources
    assert sources == [f"{path}:1", f"{path}:2"]  # the long row dropped, and counted
    assert "dropped 1 of 3 demonstrations over sft.max_len=64 tokens" in caplog.text
    assert f"{path}:3" in caplog.text
    assert responses[0][-1] == tokenizer.eos_token_id
    assert tokenizer.decode(responses[0][:-1]) == "2"
    with pytest.raises(DataError, match="every demonstration is longer"):
        demonstrations.encode(rows[2:], tokenizer, max_len=64)

    bad = {
        "missing": ([{"q": "1 + 1?"}], r"missing.jsonl:1: missing field 'response'"),
        "empty": ([{"prompt": "1 + 1?", "response": " "}], r"empty.jsonl:1: the response must"),
        "chat": (
            [{"messages": [{"role": "user", "content": "hi"}]}],
            r"chat.jsonl:1: field 'messages' must be",
        ),
    }
    for name, (data, message) in bad.items():
        file = write_jsonl(tmp_path / f"{name}.jsonl", data)
        with pytest.raises(DataError, match=message):
            demonstrations.load(file, {"prompt": "q"} if name == "missing" else None)
    with pytest.raises(DataError, match=r"nope.jsonl: no such file"):
        demonstrations.load(str(tmp_path / "nope.jsonl"))
