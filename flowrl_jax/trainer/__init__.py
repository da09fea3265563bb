"""Training: the phases as pure functions (step) and the host loop that runs them (loop)."""

from flowrl_jax.trainer.loop import Trainer, check_sizes
from flowrl_jax.trainer.step import StepSpec, TrainState, make_optimizer

__all__ = ["StepSpec", "TrainState", "Trainer", "check_sizes", "make_optimizer"]
