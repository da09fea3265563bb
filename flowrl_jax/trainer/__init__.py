"""Training: the phases as pure functions (step), one RL step on the host (loop), and a run in a
workdir with checkpoints and logs (`trainer.run.run`)."""

from flowrl_jax.trainer.loop import Trainer, check_sizes
from flowrl_jax.trainer.run import RunResult
from flowrl_jax.trainer.step import StepSpec, TrainState, make_optimizer

__all__ = ["RunResult", "StepSpec", "TrainState", "Trainer", "check_sizes", "make_optimizer"]
