"""Tasks: a dataset of prompts and a reward the host computes for each response.

tasks.get(config.task, config.seed)       digits | file (task.path) | gym:<reasoning-gym name>
tasks.encode_prompts(task, tokenizer, n)  token ids of the prompts of at most n tokens
"""

from flowrl_jax.tasks import user_rewards
from flowrl_jax.tasks.base import RULES, Task, default_config, get
from flowrl_jax.tasks.files import DataError
from flowrl_jax.tasks.prompts import EncodedPrompts, encode_prompts, prompt_limit

__all__ = [
    "RULES",
    "DataError",
    "EncodedPrompts",
    "Task",
    "default_config",
    "encode_prompts",
    "get",
    "prompt_limit",
    "user_rewards",
]
