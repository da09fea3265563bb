"""Export a run's policy as a Hugging Face checkpoint directory that `transformers` loads.

    python -m flowrl_jax.export --workdir=runs/default [--step=N] [--out=DIR] [--dtype=bfloat16]

Reads the run's resolved config (`<workdir>/config.json`) and its newest readable checkpoint (or
`--step`), and writes the policy with its tokenizer to `--out` (default `<workdir>/export/step_<N>`).
The log-Z and value heads are never exported. The whole train state is restored (the fingerprint
check reads every array), so the host needs memory for the optimiser state too.
"""

from __future__ import annotations

import argparse
import json
import logging
import os

import jax
from ml_collections import ConfigDict

from flowrl_jax import mesh as mesh_lib
from flowrl_jax.models import Model, from_config, save_hf
from flowrl_jax.models.decoder import init_params
from flowrl_jax.trainer import step as step_lib
from flowrl_jax.trainer.checkpoint import Checkpoints

log = logging.getLogger("flowrl_jax")


def abstract_state(config: ConfigDict, model_cfg, mesh) -> step_lib.TrainState:
    """The run's TrainState as ShapeDtypeStructs placed as the trainer places it."""
    spec = step_lib.StepSpec(
        model_cfg,
        config.algorithm.name,
        config.algorithm[config.algorithm.name],
        config.heads,
        prompt_len=1,
        temperature=1.0,
    )
    optimizer = step_lib.make_optimizer(config.optimizer, config.heads)

    def init(rng):
        return step_lib.init_state(spec, init_params(model_cfg, rng), optimizer, rng)

    shapes = jax.eval_shape(init, jax.random.key(0))
    shardings = step_lib.state_shardings(mesh, shapes, model_cfg.family)
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings
    )


def load_run_policy(workdir: str, step: int | None = None, mesh=None):
    """A run's policy from its newest readable checkpoint (or `step`).
    -> (Model on `mesh`, tokenizer, the checkpoint's record)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: {workdir} is not a flowrl-jax run directory")
    with open(path) as f:
        config = ConfigDict(json.load(f))
    mesh = mesh or mesh_lib.make_mesh()
    model_cfg, tokenizer = from_config.model_config(config.model, workdir)
    checkpoints = Checkpoints(workdir, config.checkpoint)
    try:
        restored = checkpoints.restore_latest(abstract_state(config, model_cfg, mesh), step)
    finally:
        checkpoints.close()
    if restored is None:
        raise FileNotFoundError(f"no readable checkpoint in {checkpoints.directory}")
    state, record = restored
    return Model(model_cfg, state.params["policy"], mesh=mesh), tokenizer, record


def export(workdir: str, step: int | None = None, out: str | None = None, dtype=None) -> str:
    model, tokenizer, record = load_run_policy(workdir, step)
    out = out or os.path.join(workdir, "export", f"step_{record['rl_step']}")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    save_hf(model, out, tokenizer=tokenizer, dtype=dtype, overwrite=True)
    log.info("exported the policy of RL step %d to %s", record["rl_step"], out)
    return out


def main(argv=None) -> None:
    # argparse, not absl flags: importing this module beside flowrl_jax.train (whose absl flags
    # include --workdir) must not define a flag twice.
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="the run's directory")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the newest readable)")
    parser.add_argument("--out", help="output directory (default: <workdir>/export/step_<N>)")
    parser.add_argument("--dtype", help="dtype of the exported weights (default: as trained)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    print(export(args.workdir, args.step, args.out, args.dtype))


if __name__ == "__main__":
    main()
