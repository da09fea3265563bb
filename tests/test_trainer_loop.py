"""The host side of a step: the prompt order, and what a failing reward function does."""

import jax
import numpy as np
import pytest

from flowrl_jax import mesh as mesh_lib
from flowrl_jax.config import base_config
from flowrl_jax.models import from_config
from flowrl_jax.tasks import Task
from flowrl_jax.trainer.data import PromptOrder
from flowrl_jax.trainer.loop import Trainer


def test_prompt_order_is_a_seeded_permutation_per_epoch_and_resumes():
    order = PromptOrder(7, seed=3)
    drawn = order.take(7 * 3 + 2)
    for epoch in range(3):
        assert sorted(drawn[7 * epoch : 7 * epoch + 7]) == list(range(7))  # each row once per epoch
    assert drawn[:7] != drawn[7:14]  # a fresh order per epoch
    assert drawn[:7] != list(range(7))
    again = PromptOrder(7, seed=3)
    again.restore(order.state())
    assert again.take(9) == PromptOrder(7, seed=3).take(7 * 3 + 2 + 9)[-9:]
    assert PromptOrder(7, seed=3, shuffle=False).take(9) == [0, 1, 2, 3, 4, 5, 6, 0, 1]
    with pytest.raises(ValueError, match="dataset or seed changed"):
        PromptOrder(8, seed=3).restore(order.state())


def test_a_failing_reward_names_the_row(tmp_path):
    config = base_config()
    config.workdir = str(tmp_path)
    mesh = mesh_lib.make_mesh()

    def reward(response, row):
        if row == 5:
            raise KeyError("no answer key")
        return 0.0

    task = Task("broken", [f"question {i}" for i in range(8)], reward)
    with jax.set_mesh(mesh):
        model, tokenizer = from_config.build(config.model, mesh)
        trainer = Trainer(config, model, tokenizer, mesh, task)
        prompts = [tokenizer(task.prompts[r])["input_ids"] for r in (4, 5)]
        with pytest.raises(RuntimeError, match=r"task 'broken'.*dataset row 5.*KeyError"):
            trainer.step(lambda: (prompts, [4, 5]))
    ok = [tokenizer(task.prompts[r])["input_ids"] for r in (1, 2)]
    with jax.set_mesh(mesh):
        metrics = trainer.step(lambda: (ok, [1, 2]))
    assert np.isfinite(metrics["loss"]) and metrics["reward/mean"] == 0.0
