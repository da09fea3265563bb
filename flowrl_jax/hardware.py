"""config.plan: the hardware a recipe is written for. `python -m flowrl_jax.plan` compiles the
recipe's programs for it and checks that each phase fits its memory (flowrl_jax/plan.py)."""

from ml_collections import ConfigDict

from flowrl_jax import rules as R

PLATFORMS = ("gpu", "tpu")


def default_config() -> ConfigDict:
    return ConfigDict(
        {
            "devices": 0,  # accelerators of the run (0: none named, no plan)
            "device_memory_gb": 0.0,  # each one's memory, GB (an H100: 80)
            "margin_gb": 6.0,  # kept free of the plan: workspaces, collective buffers
            "platform": "gpu",  # gpu | tpu: which programs the trainer runs there
            # A known model shape (models.KNOWN_SHAPES) when the config's checkpoint is not on
            # this machine; "" = the config's own model.
            "model": "",
        }
    )


RULES = {
    "devices": R.COUNT,
    "device_memory_gb": R.NON_NEGATIVE,
    "margin_gb": R.NON_NEGATIVE,
    "platform": R.OneOf(PLATFORMS),
}
