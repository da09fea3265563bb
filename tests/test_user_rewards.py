"""Rewards from the user's own code (task.reward): the example module shipped in examples/, named
as a file or as a module, several with weights, called with the prompt, the response and the
whole data row; logged per function in training (fused and phased); errors, non-numbers and hangs
named; a missing module refused before anything runs."""

import json
import os
import textwrap
import time

import jax
import numpy as np
import pytest

from flowrl_jax import mesh as mesh_lib
from flowrl_jax import tasks
from flowrl_jax.config import base_config
from flowrl_jax.evaluation import sampled
from flowrl_jax.models import from_config
from flowrl_jax.rollout import SampleOutput
from flowrl_jax.trainer.rewards import Rewards
from flowrl_jax.trainer.run import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "rewards.py")
ROWS = [
    {"question": "Add 2 and 3.", "solution": "5", "level": "easy"},
    {"question": "Add 10 and 4.", "solution": "14", "level": "hard"},
]


def data_file(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return str(path)


def file_task(tmp_path, reward, weights=""):
    config = tasks.default_config()
    config.name, config.path = "file", data_file(tmp_path)
    config.fields.prompt, config.fields.answer = "question", "solution"
    config.reward, config.reward_weights = reward, weights
    return tasks.get(config)


def recorder_module(tmp_path, monkeypatch):
    """An importable module of the user's (`my_rewards`) whose function records its arguments."""
    (tmp_path / "my_rewards.py").write_text(
        textwrap.dedent(
            """
            SEEN = []

            def level(prompt, response, row):
                SEEN.append((prompt, response, dict(row)))
                return {"easy": 1.0, "hard": 2.0}[row["level"]]

            def raises(prompt, response, row):
                raise KeyError("no such field")

            def text(prompt, response, row):
                return "1.0"

            def slow(prompt, response, row):
                import time
                time.sleep(30)
                return 0.0
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    import my_rewards

    return importlib.reload(my_rewards)


def test_the_functions_get_the_prompt_the_response_and_the_whole_row(tmp_path, monkeypatch):
    mine = recorder_module(tmp_path, monkeypatch)
    task = file_task(
        tmp_path, f"my_rewards:level,{EXAMPLE}:exact_answer,{EXAMPLE}:brevity", "1,2,0.5"
    )
    assert [r.name for r in task.named_rewards] == ["level", "exact_answer", "brevity"]
    got = task.reward("14", 1)
    # level 2 (hard) + 2 x exact (the file's "solution", renamed by task.fields) - 0.5 x 0.02
    assert got == pytest.approx(2.0 + 2 * 1.0 - 0.5 * 0.02)
    prompt, response, row = mine.SEEN[-1]
    assert prompt == "Add 10 and 4." and response == "14"
    # Every field as the file names it, and the canonical names task.fields maps them to.
    assert row == ROWS[1] | {"prompt": "Add 10 and 4.", "answer": "14"}
    assert task.reward("13", 0) == pytest.approx(1.0 + 0.0 - 0.5 * 0.02)


def test_an_example_reward_scores_the_built_in_countdown_task():
    config = tasks.default_config()
    config.name, config.reward = "countdown", f"task,{EXAMPLE}:exact_answer"
    task = tasks.get(config)
    canonical = task.rows[0]["answers"][0]
    assert task.reward(canonical, 0) == 2.0  # the verifier's 1 and the example's 1
    assert task.reward("1+1", 0) == 0.0
    # Evaluation takes the same reward: correct when it reaches the task's threshold.
    assert sampled.verdict(task, canonical, 0)[0] and not sampled.verdict(task, "1+1", 0)[0]


@pytest.mark.parametrize(
    "reward, weights, message",
    [
        (
            "no_such_module:f",
            "",
            "task.reward: 'no_such_module:f': module 'no_such_module' does not",
        ),
        (f"{EXAMPLE}:missing", "", "has no function 'missing'"),
        ("examples/none.py:f", "", "no such file 'examples/none.py'"),
        ("justaname", "", "'justaname' is not MODULE:FUNCTION or FILE.py:FUNCTION"),
        (f"{EXAMPLE}:brevity", "1,2", "gives 2 weights for the 1 functions"),
        (f"{EXAMPLE}:brevity,{EXAMPLE}:brevity", "", "['brevity'] named twice"),
    ],
)
def test_bad_reward_settings_are_refused_when_the_task_is_built(tmp_path, reward, weights, message):
    with pytest.raises(ValueError, match=None) as e:
        file_task(tmp_path, reward, weights)
    assert message in str(e.value)


def test_a_missing_reward_module_is_one_line_before_anything_runs(tmp_path):
    import jobs

    done = jobs.train_cli(
        "--config=flowrl_jax/config.py:base",
        f"--workdir={tmp_path / 'run'}",
        "--config.task.reward=no_such_module:score",
    )
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "module 'no_such_module' does not import" in errors[0]
    assert not (tmp_path / "run").exists()


def scored(task, tokenizer, responses, rows, timeout=60.0):
    """Rewards' phase over `responses` (one group per response, n = 1)."""
    ids = [tokenizer(r, add_special_tokens=False)["input_ids"] for r in responses]
    width = max(map(len, ids))
    tokens = np.zeros((len(ids), width), np.int32)
    mask = np.zeros_like(tokens)
    for i, x in enumerate(ids):
        tokens[i, : len(x)], mask[i, : len(x)] = x, 1
    out = SampleOutput(None, None, tokens, mask, None, None)
    return Rewards(task, tokenizer, 1, 2, timeout)(out, rows)


@pytest.mark.parametrize(
    "name, message",
    [
        ("raises", "the reward function 'raises' failed on dataset row 0 ("),
        ("text", "the reward function 'text' returned '1.0' on dataset row 0 ("),
    ],
)
def test_a_function_that_fails_or_returns_a_non_number_stops_the_step_naming_it(
    tmp_path, monkeypatch, name, message
):
    recorder_module(tmp_path, monkeypatch)
    task = file_task(tmp_path, f"my_rewards:{name}")
    tokenizer = from_config.model_config(base_config().model)[1]
    with pytest.raises(RuntimeError) as e:
        scored(task, tokenizer, ["5", "14"], [0, 1])
    assert message in str(e.value) and "rows.jsonl:" in str(e.value)


def test_a_function_that_hangs_stops_at_the_reward_timeout(tmp_path, monkeypatch):
    recorder_module(tmp_path, monkeypatch)
    task = file_task(tmp_path, "my_rewards:slow")
    tokenizer = from_config.model_config(base_config().model)[1]
    t0 = time.perf_counter()
    with pytest.raises(
        RuntimeError, match=r"'slow' did not return within train.reward_timeout=1.0"
    ):
        scored(task, tokenizer, ["5"], [0], timeout=1.0)
    assert time.perf_counter() - t0 < 10


# The fused step (the callback path) runs in CI in test_fused; here it is the slow variant.
@pytest.mark.parametrize("fused", [pytest.param("true", marks=pytest.mark.slow), "false"])
def test_training_logs_each_function_and_their_weighted_sum(tmp_path, fused):
    config = base_config()
    config.workdir = str(tmp_path / "run")
    config.task.name, config.task.path = "file", data_file(tmp_path)
    config.task.fields.prompt, config.task.fields.answer = "question", "solution"
    config.task.reward = f"{EXAMPLE}:exact_answer,{EXAMPLE}:brevity"
    config.task.reward_weights = "1,0.5"
    config.train.fused = fused
    mesh = mesh_lib.make_mesh({"fsdp": 1}, jax.devices()[:1])  # 2 prompts fill its batch
    with jax.set_mesh(mesh):
        result = train(config, mesh)
    for metrics in result.history:
        exact, brevity = metrics["reward/exact_answer"], metrics["reward/brevity"]
        assert brevity < 0  # every response has characters
        assert metrics["reward/mean"] == pytest.approx(exact + 0.5 * brevity, abs=1e-5)
    logged = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert all("reward/brevity" in m for m in logged)


def test_evaluation_scores_a_run_s_split_with_its_functions_under_its_timeout(
    tmp_path, monkeypatch
):
    """A countdown run with task.reward: its evaluation split is scored by the same functions
    (the periodic evaluation and `evaluate --workdir`), and a function that hangs stops the
    evaluation at train.reward_timeout, naming it."""
    recorder_module(tmp_path, monkeypatch)
    config = base_config()
    config.task.name, config.task.reward = "countdown", f"task,{EXAMPLE}:exact_answer"
    config.eval.every, config.eval.problems = 1, 2
    train_task = tasks.get(config.task)
    (split,) = sampled.eval_tasks(config, train_task).values()
    assert [r.name for r in split.named_rewards] == ["task", "exact_answer"]
    assert split.rows[0]["split"] == "test"  # the evaluation split, not the training rows
    canonical = split.rows[0]["answers"][0]
    settings = sampled.periodic_settings(config)
    assert settings.reward_timeout == config.train.reward_timeout
    figures = sampled.score(split, [0], [[canonical, "1+1"]], settings)["problems"][0]
    assert figures["mean@2"] == 0.5

    config.task.reward, config.train.reward_timeout = "my_rewards:slow", 1.0
    (split,) = sampled.eval_tasks(config, tasks.get(config.task)).values()
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match=r"'slow' did not return within 1.0 s"):
        sampled.score(split, [0], [["1+1"]], sampled.periodic_settings(config))
    assert time.perf_counter() - t0 < 10
