"""benchmarks/lora_update.py in reduced form: both sides run the trainer's update on the same
model and batch; LoRA trains a small fraction of the parameters and keeps optimiser state for
those alone."""

import os

import jax
import pytest

from benchmarks import lora_update, train_step
from flowrl_jax.models import config_from_hf, init_params, tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_lora_update_benchmark_runs_and_counts(capsys):
    results = lora_update.main(["--sizes", "tiny", "--pairs", "1", "--rank", "4"])
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1].startswith("lora_over_full step_time=")
    r = results["tiny"]
    cfg = config_from_hf(tiny.BENCH_HF_CONFIGS["tiny"], remat=train_step.REMAT)
    D, F, L, rank = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers, 4
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    # Per layer: A [in, r] + B [r, out] for q, k, v, o, gate, up, down.
    adapters = L * rank * ((D + q) + 2 * (D + kv) + (q + D) + 2 * (D + F) + (F + D))
    policy = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
    head = r["full"]["trained"] - sum(x.size for x in jax.tree.leaves(policy))
    assert r["lora"]["trained"] == adapters + head
    # Adam's two fp32 moments of what is trained (+ its step counts).
    for side in ("full", "lora"):
        assert 8 * r[side]["trained"] <= r[side]["opt_state_bytes"] < 8 * r[side]["trained"] + 64
    assert r["ratio"][0] > 0


@pytest.mark.slow  # a minute and a half: both trees build every program of two configs
def test_program_identity_of_a_tree_with_itself(capsys):
    """benchmarks/program_identity.py at HEAD against HEAD: every program the same."""
    from benchmarks import program_identity

    program_identity.main(["--base", "HEAD", "--new", ROOT])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    same, total = last.split("=")[1].split("/")
    assert same == total and int(total) >= 10, last
