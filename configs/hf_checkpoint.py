"""Run on a local Hugging Face checkpoint directory, sharded FSDP x tensor, bf16.

    python -m flowrl_jax.train --config=configs/hf_checkpoint.py \
        --config.model.checkpoint=/path/to/Qwen2.5-7B-Instruct --config.mesh.tensor=2
"""

from flowrl_jax.config import get_config as _default


def get_config():
    config = _default()
    config.model.checkpoint = "/path/to/hf/checkpoint"  # must be overridden
    config.model.dtype = "bfloat16"
    config.model.remat = "full"
    config.mesh.fsdp = -1
    config.mesh.tensor = 1
    config.workdir = "runs/hf_checkpoint"
    return config
