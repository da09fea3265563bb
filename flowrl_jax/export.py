"""Export a run's policy as a Hugging Face checkpoint directory that `transformers` loads.

    python -m flowrl_jax.export --workdir=runs/default [--step=N] [--out=DIR] [--dtype=bfloat16]
        [--adapters] [--mesh=fsdp=4,tensor=2] [--distributed [--coordinator_address=H:P
        --num_processes=N --process_id=I]]

Reads the run's resolved config (`<workdir>/config.json`) and its newest readable checkpoint (or
`--step`), and writes the policy with its tokenizer to `--out` (default `<workdir>/export/step_<N>`).
The log-Z and value heads are never exported. A LoRA run (config.lora) is exported merged (each
adapter folded into its kernel: a plain checkpoint), or with --adapters as the adapters alone in
PEFT's format (adapter_model.safetensors + adapter_config.json, for `peft.PeftModel.from_pretrained`
on the run's base checkpoint). Only the policy's parameters are read from the
checkpoint (each checked against the fingerprint saved with it): not the optimiser's moments, so
the host needs memory for the weights alone. On several hosts every host runs the same command with
--distributed (as train's --config.distributed.*): each restores its devices' slices, all gather,
process 0 writes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile

import jax
from safetensors.numpy import save_file

from flowrl_jax import cli, storage
from flowrl_jax.models import Model, lora, save_hf
from flowrl_jax.models.hf_io import dtype_name
from flowrl_jax.rollout.sampler import stop_token_ids
from flowrl_jax.trainer import sft
from flowrl_jax.trainer.restore import load_run_policy, run_config

log = logging.getLogger("flowrl_jax")


def export(
    workdir: str,
    step: int | None = None,
    out: str | None = None,
    dtype=None,
    sft_phase=False,
    mesh=None,
    adapters=False,
) -> str:
    """-> the directory written: weights, config.json, generation_config.json (every token that
    ends a response in training: the tokenizer's EOS and rollout.stop_tokens) and the tokenizer;
    with `adapters`, a LoRA run's adapters in PEFT's format and the tokenizer.
    mesh: where the checkpoint is restored (default: fsdp over every device)."""
    if dtype is not None:
        dtype_name(dtype)  # a bad name fails before the checkpoint is read
    if adapters and (sft_phase or not lora.enabled(run_config(workdir).get("lora"))):
        raise ValueError(
            f"--adapters: the {'SFT warm-up' if sft_phase else 'run'} in {workdir} trained no "
            "LoRA adapters (config.lora.rank is 0); export the whole model without --adapters"
        )
    model, tokenizer, record = load_run_policy(workdir, step, mesh, sft_phase=sft_phase)
    config = record["run_config"]
    name = f"{'sft_' if sft_phase else ''}{'adapters_' if adapters else ''}step_{record['rl_step']}"
    if lora.adapted(model.params) and not adapters:
        model = Model(
            model.cfg.replace(lora_scale=0.0),
            lora.merged(model.params, model.cfg.lora_scale),
            model.mesh,
            model.hf_config,
        )
    out = out or os.path.join(workdir, "export", name)
    base = None
    source = config.model.checkpoint
    if source and os.path.isfile(os.path.join(source, "generation_config.json")):
        with open(os.path.join(source, "generation_config.json")) as f:
            base = json.load(f)

    def save(where):
        if adapters:
            save_adapters(model, config, where, tokenizer)
            return
        save_hf(
            model,
            where,
            tokenizer=tokenizer,
            dtype=dtype,
            overwrite=True,
            stop_token_ids=stop_token_ids(tokenizer, config.rollout.get("stop_tokens", "")),
            base_generation_config=base,
        )

    if not storage.is_remote(out):
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        save(out)
    else:
        # Written on process 0's local disk first (the HF writer writes files), then uploaded file
        # by file over what was there (object storage has no rename to swap a directory in).
        with tempfile.TemporaryDirectory(prefix="flowrl-export-") as staging:
            save(os.path.join(staging, name))
            if jax.process_index() == 0:
                storage.rmtree(out)
                storage.upload(os.path.join(staging, name), out)
    phase = "SFT" if sft_phase else "RL"
    log.info("exported the policy of %s step %d to %s", phase, record["rl_step"], out)
    return out


def save_adapters(model, config, where: str, tokenizer) -> None:
    """A LoRA policy's adapters in PEFT's format, with the tokenizer (process 0 writes)."""
    base = config.model.checkpoint
    if sft.enabled(config.sft) and not lora.in_sft(config.lora):
        base = f"{config.workdir}: its SFT warm-up's model (python -m flowrl_jax.export --sft)"
        log.warning(
            "the adapters sit on the run's full SFT warm-up (lora.sft=False), not on "
            "model.checkpoint: load them on the warm-up's export (--sft)"
        )
    tensors, adapter_config = lora.peft_files(model.cfg, model.params, config.lora, base)
    if jax.process_index() != 0:
        return
    os.makedirs(where, exist_ok=True)
    save_file(tensors, os.path.join(where, "adapter_model.safetensors"))
    with open(os.path.join(where, "adapter_config.json"), "w") as f:
        json.dump(adapter_config, f, indent=2)
    if tokenizer is not None:
        tokenizer.save_pretrained(where)


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
    parser.add_argument(
        "--adapters",
        action="store_true",
        help="a LoRA run: the adapters alone in PEFT's format (default: the merged model)",
    )
    parser.add_argument(
        "--mesh",
        default="",
        help="axis sizes to restore on, e.g. fsdp=4,tensor=2 (default: fsdp=-1)",
    )
    cli.add_distributed_args(parser)
    args = parser.parse_args(argv)
    if args.dtype is not None:
        try:
            dtype_name(args.dtype)
        except ValueError as e:
            parser.error(f"--dtype: {e}")
    cli.distributed_from_args(args)  # before the mesh: it spans every host's devices
    mesh = cli.mesh_arg(parser, args.mesh)
    cli.setup_logging()
    out = export(args.workdir, args.step, args.out, args.dtype, args.sft, mesh, args.adapters)
    if jax.process_index() == 0:  # every host gathers the weights, process 0 writes and prints
        print(out)


if __name__ == "__main__":
    main()
