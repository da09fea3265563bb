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
from flowrl_jax.models.families import read_hf_config
from flowrl_jax.models.hf_io import dtype_name
from flowrl_jax.rollout.sampler import stop_token_ids
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


def load_run_policy(workdir: str, step: int | None = None, mesh=None, sft_phase: bool = False):
    """A run's policy from its newest readable checkpoint (or `step`); `sft_phase`: of its SFT
    warm-up (<workdir>/sft/checkpoints). -> (Model on `mesh`, tokenizer, the checkpoint's record;
    its "run_config": the ConfigDict the run trained with)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: {workdir} is not a flowrl-jax run directory")
    with open(path) as f:
        config = ConfigDict(json.load(f))
    mesh = mesh or mesh_lib.make_mesh()
    model_cfg, tokenizer = from_config.model_config(config.model, workdir)
    if sft_phase:
        from flowrl_jax.models.decoder import init_params as init
        from flowrl_jax.trainer import sft

        policy = jax.eval_shape(lambda: init(model_cfg, jax.random.key(0)))
        optimizer = sft.optimizer_for_restore(config.sft)
        like = sft.abstract_state(optimizer, policy, mesh, model_cfg.family)[0]
        checkpoints = Checkpoints(os.path.join(workdir, "sft"), config.checkpoint)
    else:
        like = abstract_state(config, model_cfg, mesh)
        checkpoints = Checkpoints(workdir, config.checkpoint)
    try:
        restored = checkpoints.restore_latest(like, step)
    finally:
        checkpoints.close()
    if restored is None:
        raise FileNotFoundError(f"no readable checkpoint in {checkpoints.directory}")
    state, record = restored
    source = config.model.checkpoint  # the run's HF starting point: its config keys carry over
    hf_config = read_hf_config(source) if source and os.path.isdir(source) else None
    model = Model(model_cfg, state.params["policy"], mesh=mesh, hf_config=hf_config)
    # The config of the start that saved this step (config.json is the latest start's).
    saved = ConfigDict(json.loads(record["config"])) if "config" in record else config
    return model, tokenizer, record | {"run_config": saved}


def export(
    workdir: str, step: int | None = None, out: str | None = None, dtype=None, sft_phase=False
) -> str:
    """-> the directory written: weights, config.json, generation_config.json (every token that
    ends a response in training: the tokenizer's EOS and rollout.stop_tokens) and the tokenizer."""
    if dtype is not None:
        dtype_name(dtype)  # a bad name fails before the checkpoint is read
    model, tokenizer, record = load_run_policy(workdir, step, sft_phase=sft_phase)
    config = record["run_config"]
    name = f"{'sft_' if sft_phase else ''}step_{record['rl_step']}"
    out = out or os.path.join(workdir, "export", name)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    base = None
    source = config.model.checkpoint
    if source and os.path.isfile(os.path.join(source, "generation_config.json")):
        with open(os.path.join(source, "generation_config.json")) as f:
            base = json.load(f)
    save_hf(
        model,
        out,
        tokenizer=tokenizer,
        dtype=dtype,
        overwrite=True,
        stop_token_ids=stop_token_ids(tokenizer, config.rollout.get("stop_tokens", "")),
        base_generation_config=base,
    )
    phase = "SFT" if sft_phase else "RL"
    log.info("exported the policy of %s step %d to %s", phase, record["rl_step"], out)
    return out


def main(argv=None) -> None:
    # argparse, not absl flags: importing this module beside flowrl_jax.train (whose absl flags
    # include --workdir) must not define a flag twice.
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="the run's directory")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the newest readable)")
    parser.add_argument("--out", help="output directory (default: <workdir>/export/step_<N>)")
    parser.add_argument("--dtype", help="dtype of the exported weights (default: as trained)")
    parser.add_argument(
        "--sft", action="store_true", help="the SFT warm-up's checkpoint (<workdir>/sft), not RL's"
    )
    args = parser.parse_args(argv)
    if args.dtype is not None:
        try:
            dtype_name(args.dtype)
        except ValueError as e:
            parser.error(f"--dtype: {e}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    print(export(args.workdir, args.step, args.out, args.dtype, args.sft))


if __name__ == "__main__":
    main()
