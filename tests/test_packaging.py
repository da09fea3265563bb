"""`pip install .` brings everything a run imports, and a plot that cannot be drawn does not fail
a finished run."""

import json
import os
import re
import sys
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def names(lines):
    out = set()
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            out.add(re.split(r"[<>=!\[; ]", line, maxsplit=1)[0].lower().replace("_", "-"))
    return out


def test_the_package_declares_every_runtime_requirement():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        declared = names(tomllib.load(f)["project"]["dependencies"])
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        pinned = names(f)
    # jaxlib comes with jax (a dependency of it); requirements.txt pins it beside jax.
    assert pinned - {"jaxlib"} <= declared, sorted(pinned - {"jaxlib"} - declared)


def test_ci_sees_the_package_only_through_its_checkout(tmp_path):
    """.ci/run runs the suite in a fresh virtual environment: outside the checkout (no PYTHONPATH),
    flowrl_jax does not import there, so no test passes on a copy installed by hand (the worker
    subprocesses of benchmarks/rl_step_revisions.py once did). Outside .ci/run: skipped."""
    import subprocess

    import pytest

    venv = os.environ.get("FLOWRL_JAX_CI_VENV")
    if not venv:
        pytest.skip("not under .ci/run")
    assert sys.prefix == venv, (sys.prefix, venv)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    found = subprocess.run(
        [sys.executable, "-c", "import flowrl_jax"], cwd=tmp_path, env=env, capture_output=True
    )
    assert found.returncode != 0 and b"No module named 'flowrl_jax'" in found.stderr


def test_a_plot_that_cannot_be_drawn_is_a_warning(tmp_path, monkeypatch, caplog):
    from flowrl_jax.trainer import metrics

    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises
    with caplog.at_level("WARNING"):
        assert metrics.plot(str(tmp_path)) is None
    assert "metrics.png not drawn: ModuleNotFoundError" in caplog.text
    assert not (tmp_path / "metrics.png").exists()
    monkeypatch.undo()  # matplotlib back: the same call draws it
    assert metrics.plot(str(tmp_path)) == str(tmp_path / "metrics.png")


def test_the_readme_names_the_tasks_whose_reward_is_compiled():
    """The README says which built-in tasks score inside the fused program; the tasks say the
    same (the default job's countdown is scored on the host)."""
    from flowrl_jax import tasks

    built_in = ("digits", "countdown", "humaneval")
    compiled = [n for n in built_in if tasks.get(n).make_jit_reward is not None]
    with open(os.path.join(ROOT, "README.md")) as f:
        text = " ".join(f.read().split())
    listed = text.split("(built-in tasks with one: ", 1)[1].split(")", 1)[0]
    assert listed == ", ".join(f"`{n}`" for n in compiled)
    assert "countdown" not in compiled and "the default job's countdown verifier included" in text

