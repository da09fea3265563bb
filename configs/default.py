"""The default job (the same config `python -m flowrl_jax.train` uses with no --config): a supervised
warm-up on the countdown task, FlowRL, and a before/after report (flowrl_jax/config.py)."""

from flowrl_jax.config import get_config  # noqa: F401
