"""FlowRL on your own local Hugging Face checkpoint and math data, with defaults for a real model
(not the tiny one of the embedded default): bf16 compute over fp32 master weights, the paper's
learning rate and warm-up, 8 samples of up to 2048 tokens per prompt, 300 RL steps, no foundation
checks. The checkpoint and the data are placeholders and MUST be given:

    python -m flowrl_jax.train --config=configs/hf_checkpoint.py \
        --config.model.checkpoint=/data/Qwen2.5-1.5B-Instruct --config.task.path=train.jsonl \
        --config.workdir=runs/my-model [--config.mesh.tensor=2]

Rows hold `prompt` and `answer` (--config.task.fields.* renames them); the reward is the paper's
`Answer:` line (+1 / -1). For the paper's exact recipes see configs/qwen2_5_7b_math.py and friends.
"""

from flowrl_jax.config import base_config as _default


def get_config():
    config = _default()
    config.workdir = "runs/hf_checkpoint"
    config.model.checkpoint = "/path/to/hf/checkpoint"  # must be overridden
    config.model.dtype = "bfloat16"  # compute
    # Master weights in fp32: an AdamW step at lr 1e-6 is below half a bf16 ulp of most weights,
    # so bf16 storage would round the updates away.
    config.model.param_dtype = "float32"
    config.model.remat = "full"
    config.mesh.fsdp = -1
    config.mesh.tensor = 1

    config.rollout.n = 8
    config.rollout.max_new_tokens = 2048
    config.rollout.temperature = 1.0
    # The slot sampler: 8 GB of KV cache per device (for the 8B model below, 19 responses of
    # 1024 + 2048 positions), a slot taking the next prompt x sample as a response ends (the
    # rollout batch at once would hold the cache of all 512 responses).
    config.rollout.kv_cache_gb = 8.0
    config.train.steps = 300
    config.train.prompts_per_step = 64
    config.train.minibatch_size = 32 * 8  # 2 optimiser steps per rollout batch
    config.train.micro_batches = 8
    # Packing (trainer/packing.py): rows of 1024 + 2048 tokens, 32 per micro-batch (the tokens of
    # the 8 micro-batches' padded rows), as many micro-batches as a mini-batch's tokens fill.
    config.train.pack_length = 1024 + 2048
    config.train.micro_batch_tokens = 32 * (1024 + 2048)
    config.optimizer.learning_rate = 1e-6  # the paper's, for 7B checkpoints
    config.optimizer.warmup_steps = 10

    config.task.name = "file"
    config.task.kind = "math"
    config.task.path = "/path/to/math_train.jsonl"  # must be overridden: your training data
    config.task.system_prompt = (
        "Solve the problem step by step. End with the final answer alone on the last line, as: "
        "Answer: <answer>"
    )
    # The foundation checks write a full HF export and reload it at every start: off for real
    # models (python -m flowrl_jax.train --config.smoke.enabled=True turns them on).
    config.smoke.enabled = False
    config.checkpoint.every = 10
    config.checkpoint.keep = 3

    # The hardware this file is sized for: 8 H100s (80 GB) and an 8B model (Llama 3.1 8B's
    # shape). For your checkpoint, `python -m flowrl_jax.plan --config=configs/hf_checkpoint.py
    # --config.model.checkpoint=... --config.plan.model=` plans its own shape.
    config.plan.devices = 8
    config.plan.device_memory_gb = 80.0
    config.plan.model = "llama-3.1-8b"
    # Prompts up to 1024 tokens (longer ones are left out, logged).
    config.task.max_prompt_len = 1024
    return config
