"""Every config key with a set of allowed values or a range refuses a value outside it, as one
line naming the key, the value and what is allowed, before anything is built: for every shipped
config (flowrl_jax/config.py's three and configs/*.py), every rule, every value it refuses."""

import glob
import os
import subprocess
import sys
import time

import jax
import pytest
from absl import flags
from ml_collections import config_flags

from flowrl_jax import mesh as mesh_lib
from flowrl_jax import rules as R
from flowrl_jax.trainer import run, validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = [
    *(f"flowrl_jax/config.py{which}" for which in ("", ":base", ":compare")),
    *sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))),
]
pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")


def load(spec: str):
    argv = ["train", f"--config={os.path.join(ROOT, spec)}"]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, flag_values=flag_values, sys_argv=argv)
    flag_values(argv)
    return flag_values.config


def get(config, key: str):
    for part in key.split("."):
        config = config[part]
    return config


def put(config, key: str, value):
    *path, last = key.split(".")
    for part in path:
        config = config[part]
    config[last] = value


def test_the_rules_cover_the_keys_that_have_choices_or_ranges():
    """Every rule names a key of the default config, and every string key that the code compares
    with fixed choices, and every size, is ruled (a key added later without its rule fails
    here)."""
    config = load("flowrl_jax/config.py")
    ruled = dict(R.walk(validate.rules()))
    for key in ruled:
        get(config, key)  # a rule for a key that does not exist is a typo in the rules
    free = {  # keys whose values are free text, paths, flags or open sets checked elsewhere
        "seed", "workdir", "model.checkpoint", "model.tokenizer", "rollout.stop_tokens",
        "distributed.coordinator_address", "task.name", "task.path", "task.gym_config",
        "task.system_prompt", "task.reward", "task.reward_weights", "sft.path", "eval.data", "train.compile_cache",
        "eval.tasks", "eval.pass_k", "plan.model", "lora.targets",
        "algorithm.grpo.scale_rewards", "algorithm.dapo.overlong_penalty",
    }  # fmt: skip
    unruled = []
    for key, value in _flat(config):
        if key in ruled or key in free or key.endswith(".fields." + key.rsplit(".", 1)[-1]):
            continue
        if isinstance(value, bool):
            continue  # a bool is all its type allows
        unruled.append(key)
    assert not unruled, f"keys with no rule: {unruled}"


def _flat(config, prefix=""):
    for key, value in config.items():
        if hasattr(value, "items"):
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@pytest.mark.parametrize("spec", SHIPPED)
def test_every_bad_value_of_a_shipped_config_is_refused_before_anything_is_built(spec, monkeypatch):
    config = load(spec)
    validate.check(config)  # as shipped, every value is allowed
    mesh = mesh_lib.make_mesh({"fsdp": -1}, jax.devices()[:1])

    def reached(*args, **kwargs):
        raise AssertionError("check went past the values to build the task")

    monkeypatch.setattr(run.tasks, "get", reached)
    tried = 0
    for key, rule in R.walk(validate.rules()):
        for bad in rule.refused():
            changed = config.copy_and_resolve_references()
            put(changed, key, bad)
            with pytest.raises(ValueError) as e:
                run.check(changed, mesh)
            text = str(e.value)
            assert "\n" not in text
            assert text == f"{key}={bad!r} is not allowed: expected {rule.describe()}", text
            tried += 1
    assert tried > 80  # every rule tried at least once


@pytest.mark.parametrize(
    "override, message",
    [
        ("rollout.top_p=1.5", "rollout.top_p=1.5 is not allowed: expected a number > 0 and <= 1"),
        ("train.fused=maybe", "train.fused='maybe' is not allowed: expected one of 'auto', 'true'"),
        ("optimizer.schedule=linear", "schedule='linear' is not allowed: expected one of 'consta"),
        (
            "algorithm.flowrl.is_weight=bogus",
            "is_weight='bogus' is not allowed: expected one of 'c",
        ),
        ("algorithm.grpo.loss_agg=nope", "grpo.loss_agg='nope' is not allowed: expected one of 't"),
    ],
)
def test_the_default_job_refuses_a_bad_value_in_one_line_before_the_warm_up(
    override, message, tmp_path
):
    workdir = tmp_path / "run"
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "flowrl_jax.train", f"--config.{override}", f"--workdir={workdir}"],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT),
        capture_output=True,
        text=True,
        timeout=120,
    )
    seconds = time.perf_counter() - t0
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, done.stderr[-2000:]
    assert message in lines[0], lines[0]
    assert "SFT" not in done.stderr + done.stdout  # the warm-up never started
    assert not workdir.exists()  # nothing written
    assert seconds < 30, seconds
