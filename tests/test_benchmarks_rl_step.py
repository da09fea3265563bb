"""benchmarks/rl_step.py without Tunix (CI does not install it): the reward both sides compute is
one function, and our rows run the benchmark's work at a smaller size and print the table."""

import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import rl_step
from flowrl_jax.rollout import SampleOutput

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_compiled_reward_equals_the_text_reward_tunix_runs():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 512, (16, 20)).astype(np.int32)
    mask = (rng.random((16, 20)) < 0.8).astype(np.int32)
    mask[0] = 0  # an empty response scores 0 on both sides
    tok = rl_step.IdTokenizer(512)
    out = SampleOutput(None, None, tokens, mask, None, None)
    reward = rl_step.make_task().make_jit_reward(tok)
    got = jax.jit(reward)(out, np.zeros(4, np.int32))
    want = [rl_step.even_fraction(tok.decode(t[m == 1])) for t, m in zip(tokens, mask)]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert rl_step.even_fraction("2 3 4 7") == 0.5  # by hand
    assert tok.encode(tok.decode([5, 0, 511])) == [5, 0, 511]


@pytest.mark.slow
def test_our_rows_run_the_work_and_print_the_table(monkeypatch, capsys):
    monkeypatch.setattr(rl_step, "PROMPTS", 2)
    monkeypatch.setattr(rl_step, "NEW", 8)
    rows = {k: rl_step.ROWS[k] for k in ("ours fused GRPO", "ours phased GRPO")}
    monkeypatch.setattr(rl_step, "ROWS", rows)
    result = rl_step.run(steps=2, with_tunix=False)  # asserts every row samples NEW tokens
    assert list(result) == list(rows)
    for row in result.values():
        assert len(row.steps) == 2 and all(s > 0 for s in row.steps)
    for row in result.values():  # the fused row's from the program's marks
        assert set(row.phases[1]) == set(rl_step.PHASES)
        assert sum(row.phases[1].values()) <= row.steps[1]
    assert np.isnan(rl_step.report(result)[0])  # no Tunix row, no ratio
    assert "ours phased GRPO" in capsys.readouterr().out


def test_the_revision_comparison_reads_the_table_rl_step_prints(capsys):
    """benchmarks/rl_step_revisions.py parses the medians out of rl_step.report's own table (a
    change to that table's layout must break this, not the comparison's figures)."""
    from benchmarks import rl_step_revisions as rev

    assert set(rev.ROWS) == set(rl_step.ROWS)
    rows = {}
    for i, name in enumerate(rev.ROWS):
        rows[name] = rl_step.Row(steps=[9.0, 1.0 + i, 3.0 + i, 2.0 + i], phases=[{}] * 4)
    rl_step.report(rows)
    medians = rev.parse(capsys.readouterr().out)
    assert medians == {name: 2.0 + i for i, name in enumerate(rev.ROWS)}  # median of rounds 2-4
    with pytest.raises(RuntimeError, match="printed no row"):
        rev.parse("nothing here")


def test_an_exported_step_runs_in_another_process_as_it_ran_where_it_was_built():
    """The programs comparison exports each tree's RL step over its flat leaves (optax states and
    named tuples are not registered for serialization; keys travel as their data): the loaded
    program gives the jitted function's own outputs, here for a small optimiser step with a key."""
    import optax

    from benchmarks import rl_step_revisions as rev

    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2))  # EmptyState inside
    params = {"w": jnp.arange(6.0).reshape(2, 3)}
    state = (params, opt.init(params), jax.random.key(3))

    @jax.jit
    def step(state, x):
        params, opt_state, key = state
        key, sub = jax.random.split(key)
        noise = jax.random.normal(sub, x.shape)
        grads = jax.grad(lambda p: jnp.sum((x + noise) @ p["w"]) ** 2)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, key), jnp.sum(noise)

    x = jnp.ones((4, 2))
    want = jax.tree.leaves(
        jax.tree.map(lambda v: jax.random.key_data(v) if rev.is_key(v) else v, step(state, x))
    )
    blob, leaves = rev.exported(step, (state, x))
    program, args = rev.loaded(pickle.loads(pickle.dumps(blob)), leaves)
    got = program(*args)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
    flops, _ = rev.cost(program)
    assert flops >= 4 * 2 * 3 * 2  # at least the forward matmul x @ w, multiply-adds counted twice


def fake_tree(root, side: str, log: str, fail: str = ""):
    """A source tree whose benchmarks/rl_step.py has the real rows' names but trainers that only
    append "<side> <row>" to `log` per step: enough to watch the workers' protocol and order."""
    (root / "benchmarks").mkdir(parents=True)
    # The worker imports flowrl_jax from its tree, as a checkout of a revision provides it: a link
    # to this checkout's package, not whatever the environment happens to have installed.
    (root / "flowrl_jax").symlink_to(os.path.join(ROOT, "flowrl_jax"), target_is_directory=True)
    (root / "benchmarks" / "__init__.py").write_text("")
    (root / "benchmarks" / "rl_step.py").write_text(
        f"""
PROMPTS, PROMPT_LEN, ROWS = 2, 3, {dict(rl_step.ROWS)!r}

def write_checkpoint(path):
    pass

class Trainer:
    def __init__(self, row, fused):
        self.row, self.fused = row, fused

    def step(self, draw):
        assert len(draw()[0]) == PROMPTS
        with open({log!r}, "a") as f:
            f.write({side!r} + " " + self.row + "\\n")
        return {{"loss": 0.0}}

    fused_step = step

def our_trainer(path, algorithm, fused, tuned, mesh, workdir):
    if {fail!r}:
        raise ValueError({fail!r})
    row = next(n for n, how in ROWS.items() if how == (algorithm, fused, tuned))
    return Trainer(row, fused)
"""
    )
    return str(root)


def test_the_workers_step_each_row_on_request_alternating_sides(tmp_path):
    """`--mode workers`: each tree's worker compiles (here: steps) every row once, then runs one
    step per request; the two sides take turns within each row, the order swapped each round."""
    from benchmarks import rl_step_revisions as rev

    log = str(tmp_path / "steps.log")
    trees = {side: fake_tree(tmp_path / side, side, log) for side in ("base", "new")}
    times = rev.time_workers(trees, rounds=2)
    assert set(times) == set(rl_step.ROWS)
    assert all(len(t["base"]) == len(t["new"]) == 2 for t in times.values())
    lines = open(log).read().splitlines()
    warmups, timed = lines[: 2 * len(rl_step.ROWS)], lines[2 * len(rl_step.ROWS) :]
    assert sorted(warmups) == sorted(f"{s} {r}" for s in trees for r in rl_step.ROWS)
    want = [f"{s} {r}" for r in rl_step.ROWS for s in ("base", "new")]
    want += [f"{s} {r}" for r in rl_step.ROWS for s in ("new", "base")]
    assert timed == want


def test_a_worker_that_fails_says_why(tmp_path):
    from benchmarks import rl_step_revisions as rev

    log = str(tmp_path / "steps.log")
    trees = {
        "base": fake_tree(tmp_path / "base", "base", log),
        "new": fake_tree(tmp_path / "new", "new", log, fail="this tree builds no trainer"),
    }
    with pytest.raises(RuntimeError, match="this tree builds no trainer"):
        rev.time_workers(trees, rounds=1)
