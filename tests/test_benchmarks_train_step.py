"""benchmarks/train_step.py stays runnable and compares like with like: its core on the tiny Qwen3
config with one pair, where our update step and the torch step must reduce the same loss."""

import re

import pytest

from benchmarks import train_step as ts
from flowrl_jax import testing

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def test_flop_count_uses_the_models_own_parameter_count():
    """N of 6·N·tokens: every parameter of the transformers model except the embedding table."""
    for name, hf in testing.BENCH_HF_CONFIGS.items():
        hf = dict(hf)
        config = transformers.AutoConfig.for_model(hf.pop("model_type"), **hf)
        with torch.device("meta"):
            model = transformers.AutoModelForCausalLM.from_config(config)
        counted = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n)
        assert ts.step_params(testing.BENCH_HF_CONFIGS[name]) == counted, name


@pytest.mark.slow  # CI's time; the benchmark's parameter count stays in CI (above)
def test_one_pair_on_a_tiny_model_prints_the_table_and_the_summary_line(capsys):
    batch, prompt, response = 8, 8, 16
    result = ts.run_size(
        "tiny-test", testing.TINY_HF_CONFIGS["qwen3"], batch, prompt, response, pairs=1
    )
    # Same weights, same batch, same loss: the first step's loss, gradient norm (before the
    # clip) and entropy agree between our step and the torch step.
    for label, (ours, theirs) in {
        "loss": result.first_loss,
        "grad_norm": result.first_grad_norm,
        "entropy": result.first_entropy,
    }.items():
        assert abs(ours - theirs) <= 1e-4 * abs(theirs), (label, ours, theirs)
    assert result.first_grad_norm[0] > 1.0  # the clip at 1.0 is exercised, not bypassed
    [pair] = result.pairs
    assert pair.ours_s > 0 and pair.torch_s > 0 and pair.peak > 1e9
    assert result.flops == 6 * result.n_params * batch * (prompt + response)

    ts.report(result, batch, prompt, response)
    line = ts.summary({"tiny": result, "small": result})
    out = capsys.readouterr().out
    assert "first step: loss ours" in out and re.search(r"^median: ours .* s, torch ", out, re.M)
    assert re.fullmatch(
        r"mfu_small=\d+\.\d{3} speedup_vs_torch tiny=\d+\.\d\d small=\d+\.\d\d", line
    )
    assert line.endswith(f"small={result.speedup():.2f}")
    assert ts.summary({"tiny": result}).startswith("mfu_small=n/a ")
