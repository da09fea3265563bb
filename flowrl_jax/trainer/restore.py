"""A run's policy read back from its workdir: the resolved config (`<workdir>/config.json`), the
train state's shapes and shardings as the trainer places them, and the newest readable checkpoint
(or a given step) of RL or of the SFT warm-up. Export and evaluation both start here."""

from __future__ import annotations

import json
import os

import jax
from ml_collections import ConfigDict

from flowrl_jax import mesh as mesh_lib
from flowrl_jax import storage
from flowrl_jax.models import Model, from_config, lora
from flowrl_jax.models.decoder import param_shapes
from flowrl_jax.models.families import read_hf_config
from flowrl_jax.trainer import step as step_lib
from flowrl_jax.trainer.checkpoint import Checkpoints


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
    optimizer = step_lib.optimizer_shapes(config.optimizer, config.heads)

    def init(rng):
        policy = policy_shapes(config, model_cfg, lora.enabled(config.get("lora")))
        return step_lib.init_state(spec, policy, optimizer, rng)

    shapes = jax.eval_shape(init, jax.random.key(0))
    shardings = step_lib.state_shardings(mesh, shapes, model_cfg.family)
    return step_lib.placed(shapes, shardings)


def policy_shapes(config: ConfigDict, model_cfg, adapted: bool) -> dict:
    """The run's policy parameters as shapes; `adapted`: with its adapters beside."""
    policy = param_shapes(model_cfg)
    if adapted:
        adapters = lora.adapter_shapes(config.lora, policy)
        policy = lora.with_adapters(policy, adapters)
    return policy


def run_config(workdir: str) -> ConfigDict:
    """The resolved config of a run's latest start (`<workdir>/config.json`)."""
    path = os.path.join(workdir, "config.json")
    if not storage.exists(path):
        raise FileNotFoundError(f"{path} not found: {workdir} is not a flowrl-jax run directory")
    return ConfigDict(json.loads(storage.read_text(path)))


def load_run_policy(workdir: str, step: int | None = None, mesh=None, sft_phase: bool = False):
    """A run's policy from its newest readable checkpoint (or `step`); `sft_phase`: of its SFT
    warm-up (<workdir>/sft/checkpoints). -> (Model on `mesh`, tokenizer, the checkpoint's record;
    its "run_config": the ConfigDict the run trained with)."""
    config = run_config(workdir)
    mesh = mesh or mesh_lib.make_mesh()
    model_cfg, tokenizer = from_config.model_config(config.model)
    from flowrl_jax.trainer import sft

    lora_cfg = config.get("lora")
    adapted = lora.in_sft(lora_cfg) if sft_phase else lora.enabled(lora_cfg)
    if adapted:
        model_cfg = lora.model_config(model_cfg, config.lora)
    if sft_phase:
        optimizer = step_lib.optimizer_shapes(config.sft.optimizer, None)
        policy = policy_shapes(config, model_cfg, adapted)
        like = sft.abstract_state(optimizer, policy, mesh, model_cfg.family)[0]
        checkpoints = Checkpoints(os.path.join(workdir, "sft"), config.checkpoint)
    else:
        like = abstract_state(config, model_cfg, mesh)
        checkpoints = Checkpoints(workdir, config.checkpoint)
    try:
        restored = checkpoints.restore_policy(like, step)
    finally:
        checkpoints.close()
    if restored is None:
        raise FileNotFoundError(f"no readable checkpoint in {checkpoints.directory}")
    params, record = restored
    if adapted:  # the checkpoint holds the adapters; the base is the run's own
        if not sft_phase and sft.enabled(config.sft) and not lora.in_sft(lora_cfg):
            base = load_run_policy(workdir, mesh=mesh, sft_phase=True)[0].params  # full warm-up
        else:
            base = from_config.build(config.model, mesh, config.seed)[0].params
        params = lora.with_adapters(base, lora.flat(params))
    source = config.model.checkpoint  # the run's HF starting point: its config keys carry over
    hf_config = read_hf_config(source) if source and os.path.isdir(source) else None
    model = Model(model_cfg, params, mesh=mesh, hf_config=hf_config)
    # The config of the start that saved this step (config.json is the latest start's).
    saved = ConfigDict(json.loads(record["config"])) if "config" in record else config
    return model, tokenizer, record | {"run_config": saved}
