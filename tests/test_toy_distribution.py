"""FlowRL's fixed point, measured exactly on an enumerable space (benchmarks/toy_distribution.py):
trained through the registered losses, FlowRL on raw rewards reaches the distribution its docstring
derives, keeping every optimal answer; GRPO on the same budget concentrates on few."""

import numpy as np
import pytest

from benchmarks import toy_distribution as toy

STEPS = 1500


@pytest.mark.parametrize("length_normalize", [True, False])
def test_flowrl_matches_its_exact_fixed_point(length_normalize):
    table, tv = toy.train("flowrl", STEPS, length_normalize=length_normalize)
    r = toy.summary(table, length_normalize=length_normalize)
    assert r["tv"] < 0.05, r
    assert r["kept"] == r["optimal"] == 25, r  # every optimal answer holds >= half its target mass
    assert tv[-1] < tv[0] / 5  # it got there by training, not by starting there
    # The other normalisation's target is a different distribution: the match is specific.
    other = toy.summary(table, length_normalize=not length_normalize)
    assert other["tv"] > 0.2, other


def test_grpo_concentrates_on_the_same_budget():
    ref, rewards = toy.problem()
    goal = toy.target(ref, rewards)
    table, _ = toy.train("grpo", STEPS)
    r = toy.summary(table)
    assert r["tv"] > 0.5, r
    assert r["kept"] <= 5, r
    entropy_goal = -(goal * np.log(goal)).sum()
    assert r["entropy"] < entropy_goal / 4, (r, entropy_goal)
