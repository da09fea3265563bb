"""Which parametrisations CI runs: a test repeated per model family runs on one family in CI, the
others under -m slow (the families' differences have their own tests in test_decoder / test_hf_*)."""

import pytest

from flowrl_jax import testing

CI_FAMILY = "qwen2"


def families():
    """testing.FAMILIES as pytest params, all but CI_FAMILY marked slow."""
    return [
        pytest.param(f, marks=[] if f == CI_FAMILY else [pytest.mark.slow])
        for f in testing.FAMILIES
    ]
