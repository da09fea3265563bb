"""The default job (the same config `python -m flowrl_jax.train` uses with no --config)."""

from flowrl_jax.config import get_config  # noqa: F401
