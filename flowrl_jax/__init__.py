"""flowrl-jax: FlowRL and its baselines for LLM reasoning, in JAX/Flax."""

__version__ = "0.1.0"
