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

from flowrl_jax.config import base_config as _default


def get_config():
    config = _default()
    config.workdir = "runs/qwen2_5_32b_math"  # multi-host: a path every host can write (NFS)

    # REQUIRED override: a local copy of the HF checkpoint Qwen/Qwen2.5-32B (the base model, paper).
    config.model.checkpoint = "/path/to/Qwen/Qwen2.5-32B"  # must be overridden
    config.model.dtype = "bfloat16"  # compute in bf16 (paper: bf16 training)
    # Master weights in fp32 (as the paper's verl actor): at lr 1e-6 a bf16-stored weight would
    # round every AdamW update away. 32.8B x (4 param + 8 Adam + 4 grad) bytes = 524 GB, sharded.
    config.model.param_dtype = "float32"
    config.model.remat = "full"  # 8192-token responses: recompute activations in the backward
    # Tensor parallel 4 (our choice, not the paper's): Qwen2.5-32B has 40 query and 8 KV heads,
    # so 4 shards keep whole heads (10 q, 2 kv per shard; 8 would leave 1 kv head, 16 would split
    # one); 4 chips is one TPU v4 / v5p host and half a GPU node, so the per-layer all-reduces stay
    # on the host's fast links. It cuts each device's share of the bf16 weights that decoding reads
    # every token to 16 GB, and of the KV cache to 2 of 8 heads. FSDP takes the remaining devices.
    config.mesh.data = 1
    config.mesh.fsdp = -1
    config.mesh.tensor = 4

    config.rollout.n = 8  # G = 8 samples per prompt (paper)
    config.rollout.max_new_tokens = 8192  # max response length (paper)
    config.rollout.temperature = 1.0  # rollout temperature (paper)
    config.rollout.top_p = 1.0  # no nucleus truncation (paper)
    config.rollout.top_k = 0  # no top-k truncation (paper samples the full distribution)

    config.train.prompts_per_step = 512  # prompts per rollout batch (paper)
    # 32 prompts x 8 samples per optimiser step (paper): 16 steps per rollout batch.
    config.train.minibatch_size = 32 * 8
    config.train.epochs = 1  # one pass over each rollout batch: the paper's 16 steps per batch
    # Gradient accumulation: 16 micro-batches of 16 sequences (our choice, not planned at 32B; the 7B
    # plan fits 40.7 GB per device with 16 on fsdp=8). Rows per micro-batch must divide over data x fsdp.
    config.train.micro_batches = 16

    config.optimizer.learning_rate = 1e-6  # AdamW lr (paper)
    config.optimizer.warmup_steps = 10  # linear warm-up, then constant (paper)
    config.optimizer.weight_decay = 0.1  # AdamW weight decay (paper)
    config.optimizer.grad_clip = 1.0  # global-norm clip over all parameters, heads included (paper)

    # The paper's math training reward: the last `Answer:` line, normalised, exact match, +1 / -1.
    config.task.name = "file"
    config.task.kind = "math"
    config.task.path = "/path/to/math_train.jsonl"  # must be overridden: your training data
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
    return config
