"""FlowRL on Qwen2.5-7B for math: the paper's main recipe (docs/algorithms.md, "The
paper's recipe"). The checkpoint path is a placeholder and MUST be given:

    python -m flowrl_jax.train --config=configs/qwen2_5_7b_math.py \
        --config.model.checkpoint=/data/Qwen2.5-7B --config.workdir=/mnt/shared/runs/7b-flowrl

Each baseline is the same run with one override (the rest of the recipe stays identical):

    python -m flowrl_jax.train --config=configs/qwen2_5_7b_math.py \
        --config.model.checkpoint=/data/Qwen2.5-7B --config.algorithm.name=grpo
    # ... or ppo | reinforce_pp | dapo | gspo

Multi-host: launch/tpu_pod.sh (TPU) or launch/multi_gpu.sh (GPU, SLURM) with the same flags.
The training data is a placeholder too: --config.task.path=FILE (rows with `prompt` and `answer`;
--config.task.fields.answer=... renames). The number of RL steps is ours (the paper gives none): train.steps = 300,
--config.train.steps=N changes it.
"""

from flowrl_jax.config import base_config as _default


def get_config():
    config = _default()
    config.workdir = "runs/qwen2_5_7b_math"  # multi-host: a path every host can write (NFS)

    # REQUIRED override: a local copy of the HF checkpoint Qwen/Qwen2.5-7B (the base model, paper).
    config.model.checkpoint = "/path/to/Qwen/Qwen2.5-7B"  # must be overridden
    config.model.dtype = "bfloat16"  # compute in bf16 (paper: bf16 training)
    # Master weights in fp32, as the paper's verl trainer keeps its actor: an AdamW step at lr 1e-6
    # moves a weight of ~1e-2 by ~1e-6, below half a bf16 ulp there (~6e-5), so bf16 storage would
    # round every update away.
    config.model.param_dtype = "float32"
    config.model.remat = "full"  # 8192-token responses: recompute activations in the backward
    config.mesh.data = 1
    config.mesh.fsdp = -1  # all devices shard parameters and optimiser state (7B fits without TP)
    config.mesh.tensor = 1

    config.rollout.n = 8  # G = 8 samples per prompt (paper)
    config.rollout.max_new_tokens = 8192  # max response length (paper)
    config.rollout.temperature = 1.0  # rollout temperature (paper)
    config.rollout.top_p = 1.0  # no nucleus truncation (paper)
    config.rollout.top_k = 0  # no top-k truncation (paper samples the full distribution)
    # The slot sampler: each device keeps the KV cache of as many responses as 10 GB holds (17 of
    # 2048 + 8192 positions in bf16) and gives a slot to the next prompt x sample as soon as a
    # response ends. The 4,096 rows of a rollout batch at once would need 2.4 TB of cache. 10 GB is
    # what the CPU compiler's plan of the sampler leaves (tests/test_memory_plans.py): that plan
    # holds float32 copies of the bf16 weights, 30 GB a device, that a GPU does not.
    config.rollout.kv_cache_gb = 10.0

    config.train.prompts_per_step = 512  # prompts per rollout batch (paper)
    # 32 prompts x 8 samples per optimiser step (paper): 512 / 32 = 16 steps per rollout batch, so
    # pi_old != pi_theta after the first.
    config.train.minibatch_size = 32 * 8
    config.train.epochs = 1  # one pass over each rollout batch: the paper's 16 steps per batch
    # Gradient accumulation: 16 micro-batches of 16 sequences. tests/test_memory_plans.py compiles
    # this update on fsdp=8 at 2048 + 8192 tokens: 40.7 GB per device (8 micro-batches: 59.9 GB).
    config.train.micro_batches = 16
    # Packing (trainer/packing.py): scoring and the update lay the sequences end to end in rows of
    # 2048 + 8192 tokens, 16 rows per micro-batch (the tokens of the 16 padded sequences above), so
    # responses of a few hundred tokens cost their tokens, not 10,240 each; a mini-batch then runs
    # as few micro-batches as its tokens fill (micro_batches above is unused).
    config.train.pack_length = 2048 + 8192
    config.train.micro_batch_tokens = 16 * (2048 + 8192)

    config.optimizer.learning_rate = 1e-6  # AdamW lr (paper)
    config.optimizer.warmup_steps = 10  # linear warm-up, then constant (paper)
    config.optimizer.weight_decay = 0.1  # AdamW weight decay (paper)
    config.optimizer.grad_clip = 1.0  # global-norm clip over all parameters, heads included (paper)

    # The paper's math training reward: the last `Answer:` line, normalised, exact match, +1 / -1.
    config.task.name = "file"
    config.task.kind = "math"
    config.task.path = "/path/to/math_train.jsonl"  # must be overridden: your training data
    # Prompts of up to 2048 tokens, as the authors' verl script (longer ones are left out, logged).
    config.task.max_prompt_len = 2048
    config.task.system_prompt = "Solve the problem step by step. End with the final answer alone on the last line, as: Answer: <answer>"
    # Evaluation as the paper reports it (Math-Verify, 16 samples at 0.6 / 0.95): run
    # `python -m flowrl_jax.evaluate` on the checkpoints, or set eval.every / eval.data here.
    config.eval.k = 16
    config.eval.pass_k = "1,16"

    config.algorithm.name = "flowrl"  # beta = 15, clip(w, 0.8, 1.2): the defaults are the paper's
    # Our choices (the paper gives none): no foundation checks (they write a full HF export on every
    # start), and a checkpoint every 5 RL steps (each holds several optimiser steps), newest 3 kept.
    config.smoke.enabled = False
    # 300 RL steps: about 9 passes over the 17k-problem DAPO-Math set the authors' scripts train on
    # at 512 prompts a step (the paper states no step count). The cosine schedule, if chosen,
    # decays over them.
    config.train.steps = 300
    config.checkpoint.every = 5
    config.checkpoint.keep = 3

    # The hardware: 8 H100s (80 GB). `python -m flowrl_jax.plan --config=<this file>` compiles
    # each phase for it and checks it fits with 6 GB to spare (tests/test_memory_plans.py).
    config.plan.devices = 8
    config.plan.device_memory_gb = 80.0
    config.plan.model = "qwen2.5-7b"
    return config
