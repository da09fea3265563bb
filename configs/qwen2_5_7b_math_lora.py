"""FlowRL on Qwen2.5-7B for math with LoRA, on ONE 80 GB accelerator: the paper's recipe
(configs/qwen2_5_7b_math.py) with rank-64 adapters on every attention and MLP projection, the base
frozen in bf16, and the reference policy the base itself (no second copy of the weights).

    python -m flowrl_jax.train --config=configs/qwen2_5_7b_math_lora.py \
        --config.model.checkpoint=/data/Qwen2.5-7B --config.task.path=/data/math_train.jsonl

Export: `python -m flowrl_jax.export --workdir=... [--adapters]` writes the merged model, or the
adapters alone in PEFT's format for the base checkpoint. Check the memory before renting:
`python -m flowrl_jax.plan --config=configs/qwen2_5_7b_math_lora.py` (tests/test_memory_plans.py
plans its update in CI).
"""

import os

from flowrl_jax.config import from_file


def _paper_recipe():
    """configs/qwen2_5_7b_math.py, read beside this file."""
    return from_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "qwen2_5_7b_math.py"))


def get_config():
    config = _paper_recipe()
    config.workdir = "runs/qwen2_5_7b_math_lora"

    config.lora.rank = 64
    config.lora.alpha = 128.0  # s = alpha / rank = 2
    # Every projection of every layer (the default targets): q, k, v, o, gate, up, down.
    # The frozen base needs no fp32 master copy (no update ever rounds into it): bf16, 15.2 GB.
    # The adapters and their Adam moments stay fp32 (models/lora.py).
    config.model.param_dtype = "bfloat16"
    # LoRA's usual rate is about 10x full fine-tuning's (Schulman et al., "LoRA Without Regret",
    # Thinking Machines 2025): 1e-5 against the paper's 1e-6. Ours, not the paper's.
    config.optimizer.learning_rate = 1e-5

    # One device: no sharding. The mini-batch stays the paper's 32 prompts x 8 samples; the
    # update packs it into micro-batches of 2 rows of 2048 + 8192 tokens. The plan on one 80 GB
    # device (tests/test_memory_plans.py; BENCHMARKS.md): the update 69.5 GB at 2 rows, 90.1 GB
    # at 4; the sampler 72.2 GB with 8 GB of KV cache (13 slots).
    config.mesh.fsdp = 1
    config.train.micro_batch_tokens = 2 * (2048 + 8192)
    config.rollout.kv_cache_gb = 8.0
    config.plan.devices = 1
    config.plan.device_memory_gb = 80.0
    return config
