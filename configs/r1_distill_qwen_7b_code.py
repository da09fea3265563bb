"""FlowRL on DeepSeek-R1-Distill-Qwen-7B for code (docs/algorithms.md: 64 prompts per batch, n = 8,
temperature 0.6; the rest follows the math recipe). The checkpoint path is a placeholder and MUST
be given:

    python -m flowrl_jax.train --config=configs/r1_distill_qwen_7b_code.py \
        --config.model.checkpoint=/data/DeepSeek-R1-Distill-Qwen-7B

Each baseline is the same run with one override (the rest of the recipe stays identical):

    python -m flowrl_jax.train --config=configs/r1_distill_qwen_7b_code.py \
        --config.model.checkpoint=/data/DeepSeek-R1-Distill-Qwen-7B --config.algorithm.name=grpo
    # ... or ppo | reinforce_pp | dapo | gspo

The training data is a placeholder too: --config.task.path=FILE (rows with `prompt` and `tests`: a
Python test program or stdin/stdout cases, run in the sandbox). The number of RL steps is ours
(the paper gives none): train.steps = 300, --config.train.steps=N changes it.
"""

from flowrl_jax.config import base_config as _default


def get_config():
    config = _default()
    config.workdir = "runs/r1_distill_qwen_7b_code"  # multi-host: a path every host can write (NFS)

    # REQUIRED override (must be overridden): a local copy of the paper's code model,
    # deepseek-ai/DeepSeek-R1-Distill-Qwen-7B.
    config.model.checkpoint = "/path/to/deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"
    config.model.dtype = "bfloat16"  # compute in bf16 (paper: bf16 training)
    # Master weights in fp32 (as the paper's verl actor): at lr 1e-6 a bf16-stored weight would
    # round every AdamW update away.
    config.model.param_dtype = "float32"
    config.model.remat = "full"  # long reasoning responses: recompute activations in the backward
    config.mesh.data = 1
    config.mesh.fsdp = -1  # all devices shard parameters and optimiser state (a 7B needs no TP)
    config.mesh.tensor = 1

    config.rollout.n = 8  # G = 8 samples per prompt (paper, code)
    config.rollout.temperature = 0.6  # rollout temperature (paper, code)
    # Not in the spec for code: the math recipe's response length, top_p and top_k.
    config.rollout.max_new_tokens = 8192
    config.rollout.top_p = 1.0
    config.rollout.top_k = 0
    # The slot sampler, as in the 7B math recipe: 10 GB of KV cache per device (17 responses of
    # 2048 + 8192 positions), a slot taking the next prompt x sample as a response ends.
    config.rollout.kv_cache_gb = 10.0

    config.train.prompts_per_step = 64  # prompts per rollout batch (paper, code)
    # Not in the spec for code: the math recipe's 32 prompts x 8 samples per optimiser step, which
    # gives 64 / 32 = 2 steps per rollout batch.
    config.train.minibatch_size = 32 * 8
    config.train.epochs = 1
    # Gradient accumulation: 16 micro-batches of 16 sequences (the plan below: 8 would not fit).
    config.train.micro_batches = 16
    # Packing as in the math recipe: rows of 2048 + 8192 tokens, 16 per micro-batch.
    config.train.pack_length = 2048 + 8192
    config.train.micro_batch_tokens = 16 * (2048 + 8192)

    # The optimiser of the paper's math recipe (the spec gives no other for code).
    config.optimizer.learning_rate = 1e-6  # AdamW lr
    config.optimizer.warmup_steps = 10  # linear warm-up, then constant
    config.optimizer.weight_decay = 0.1  # AdamW weight decay
    config.optimizer.grad_clip = 1.0  # global-norm clip over all parameters, heads included

    # The code reward: the last fenced block run against the row's tests in the sandbox, 1 if all pass.
    config.task.name = "file"
    config.task.kind = "code"
    config.task.path = "/path/to/code_train.jsonl"  # must be overridden: your training data
    config.task.max_prompt_len = 2048  # our limit (longer problems are left out, logged)
    config.eval.k = 16  # the paper's pass@1 (mean of 16) and pass@16
    config.eval.pass_k = "1,16"

    config.algorithm.name = "flowrl"  # beta = 15, clip(w, 0.8, 1.2): the defaults are the paper's
    # Our choices (the paper gives none): no foundation checks (they write a full HF export on every
    # start), and a checkpoint every 5 RL steps (each holds several optimiser steps), newest 3 kept.
    config.smoke.enabled = False
    # 300 RL steps of 64 prompts: 19,200 prompts, a few passes over a code set of some thousands
    # (the paper states no step count). The cosine schedule, if chosen, decays over them.
    config.train.steps = 300
    config.checkpoint.every = 5
    config.checkpoint.keep = 3

    # The hardware: 8 H100s (80 GB). `python -m flowrl_jax.plan --config=<this file>` compiles
    # each phase for it and checks it fits with 6 GB to spare (tests/test_memory_plans.py).
    config.plan.devices = 8
    config.plan.device_memory_gb = 80.0
    config.plan.model = "qwen2.5-7b"  # the distilled model has Qwen2.5-7B's shape
    return config
