"""FlowRL on Qwen2.5-32B for math: the 7B recipe (docs/algorithms.md, "The paper's recipe")
on the 32B base model, with tensor parallelism. The checkpoint path is a placeholder and MUST be
given:

    python -m flowrl_jax.train --config=configs/qwen2_5_32b_math.py \
        --config.model.checkpoint=/data/Qwen2.5-32B --config.workdir=/mnt/shared/runs/32b-flowrl

Each baseline is the same run with one override (the rest of the recipe stays identical):

    python -m flowrl_jax.train --config=configs/qwen2_5_32b_math.py \
        --config.model.checkpoint=/data/Qwen2.5-32B --config.algorithm.name=grpo
    # ... or ppo | reinforce_pp | dapo | gspo

The device count must be a multiple of mesh.tensor = 4 (e.g. a v5p-64 slice or 4 x 8 H100) and
256 / (devices / 4) a whole number (the mini-batch splits over the fsdp axis).
The training data is a placeholder too: --config.task.path=FILE (rows with `prompt` and `answer`;
--config.task.fields.answer=... renames). The number of RL steps is ours (the paper gives none): train.steps = 300,
--config.train.steps=N changes it.
"""

import os

from flowrl_jax.config import from_file


def _recipe_7b():
    """configs/qwen2_5_7b_math.py, read beside this file."""
    return from_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "qwen2_5_7b_math.py"))


def get_config():
    config = _recipe_7b()  # everything the paper fixes: sampling, batch, optimiser, reward, eval
    config.workdir = "runs/qwen2_5_32b_math"  # multi-host: a path every host can write (NFS)
    # REQUIRED override: a local copy of the HF checkpoint Qwen/Qwen2.5-32B (the base model, paper).
    config.model.checkpoint = "/path/to/Qwen/Qwen2.5-32B"  # must be overridden
    # Master weights stay fp32 as at 7B: 32.8B x (4 param + 8 Adam + 4 grad) bytes = 524 GB, sharded.
    # Tensor parallel 4 (our choice, not the paper's): Qwen2.5-32B has 40 query and 8 KV heads,
    # so 4 shards keep whole heads (10 q, 2 kv per shard; 8 would leave 1 kv head, 16 would split
    # one); 4 chips is one TPU v4 / v5p host and half a GPU node, so the per-layer all-reduces stay
    # on the host's fast links. It cuts each device's share of the bf16 weights that decoding reads
    # every token to 16 GB, and of the KV cache to 2 of 8 heads. FSDP takes the remaining devices.
    config.mesh.tensor = 4
    # The hardware: 4 nodes of 8 H100s (80 GB); `python -m flowrl_jax.plan` checks every phase
    # fits with 6 GB to spare (tests/test_memory_plans.py). Each device keeps 2 of the 8 KV heads
    # of its group's slots; 4 GB of them per device is 5 slots of 2048 + 8192 positions per group
    # of 4 devices, 40 in all: the CPU compiler's plan of the sampler (it holds float32 copies of
    # the bf16 weights, 33 GB a device, that a GPU does not) leaves no room for more.
    config.plan.devices = 32
    config.rollout.kv_cache_gb = 4.0
    config.plan.model = "qwen2.5-32b"
    # Gradient accumulation as at 7B, 16 micro-batches of 16 sequences.
    return config
