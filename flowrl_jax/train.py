"""The main job.

    python -m flowrl_jax.train                                  # embedded default (tiny model, CPU)
    python -m flowrl_jax.train --config=configs/default.py --config.mesh.tensor=2
    python -m flowrl_jax.train --config=configs/hf_checkpoint.py --config.model.checkpoint=/ckpt

Builds the mesh, loads (or builds) the policy and tokenizer sharded on it, and checks the
foundation end to end (greedy decode with the KV cache, a sampled group whose log-probs match a
recomputation, HF export and sharded reload). Then it runs `train.steps` RL steps of
`algorithm.name` (flowrl by default; grpo, ppo, reinforce_pp, dapo, gspo) on a synthetic task whose
reward is the fraction of response tokens that are digits. (Issue #5 adds checkpoints, logs and
real tasks.)
"""

from __future__ import annotations

import logging
import os
import time

import jax
import numpy as np
from absl import app
from ml_collections import config_flags

from flowrl_jax import mesh as mesh_lib
from flowrl_jax.models import from_config, load_hf, save_hf
from flowrl_jax.rollout import sampler as sampler_lib
from flowrl_jax.rollout import token_logprobs
from flowrl_jax.trainer import Trainer, check_sizes

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(__file__), "config.py"), "ml_collections config file"
)
log = logging.getLogger("flowrl_jax")


def init_distributed(config) -> None:
    if not config.enabled:
        return
    kwargs = {}
    if config.coordinator_address:
        kwargs = dict(
            coordinator_address=config.coordinator_address,
            num_processes=config.num_processes,
            process_id=config.process_id,
        )
    jax.distributed.initialize(**kwargs)


def smoke(config, mesh, model, tokenizer, t_build: float) -> dict:
    """The foundation run; returns the figures it prints."""
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 12 + 30?"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    # Pad the batch to the mesh's data-parallel size so it splits evenly.
    batch = tokenizer(
        [prompt] * mesh_lib.batch_size_divisor(mesh), return_tensors="np", padding=True
    )
    steps = config.smoke.new_tokens
    t0 = time.perf_counter()
    new = model.generate_greedy(batch["input_ids"], batch["attention_mask"], steps=steps)
    t_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    new = model.generate_greedy(batch["input_ids"], batch["attention_mask"], steps=steps)
    t_decode = time.perf_counter() - t0
    rollout = sample_and_recompute(config, model, tokenizer, prompt, mesh)
    export = save_hf(
        model, os.path.join(config.workdir, "export"), tokenizer=tokenizer, overwrite=True
    )
    reloaded = load_hf(export, mesh=mesh, dtype=model.cfg.dtype)
    ref = np.asarray(model(batch["input_ids"], batch["attention_mask"]))
    got = np.asarray(reloaded(batch["input_ids"], batch["attention_mask"]))
    return {
        "model": f"{model.cfg.family}, {model.num_params:,} params, {model.cfg.dtype}",
        "mesh": str(dict(mesh.shape)),
        "build/load (s)": f"{t_build:.2f}",
        "greedy decode, first call incl. compile (s)": f"{t_first:.2f}",
        "greedy decode tokens/s (compiled)": f"{new.size / t_decode:,.0f}",
        "completion of row 0": repr(tokenizer.decode(new[0])),
        **rollout,
        "export": export,
        "export -> reload max |logit diff|": f"{np.abs(ref - got).max():.2e}",
    }


def sample_and_recompute(config, model, tokenizer, prompt: str, mesh) -> dict:
    """Sample config.rollout.n responses to `prompt` and recompute their log-probs in one pass."""
    sampler, sp = sampler_lib.from_config(
        model.cfg, config.rollout, mesh, tokenizer, config.smoke.new_tokens
    )
    ids = tokenizer(prompt)["input_ids"]
    t0 = time.perf_counter()
    out = sampler(model.params, [ids], jax.random.key(config.seed), sp)
    t_sample = time.perf_counter() - t0
    seq = np.concatenate([out.prompt_tokens, out.tokens], 1)
    seq_mask = np.concatenate([out.prompt_mask, out.mask], 1)
    rows = mesh_lib.batch_size_divisor(mesh)
    pad = -len(seq) % rows  # the recomputation batch must divide over the mesh too
    seq, seq_mask = np.pad(seq, ((0, pad), (0, 0))), np.pad(seq_mask, ((0, pad), (0, 0)))
    seq_mask[len(out.tokens) :, -1] = 1
    recomputed = jax.jit(token_logprobs, static_argnums=(0, 4))(
        model.cfg, model.params, seq, seq_mask, sp.temperature
    )
    P = out.prompt_tokens.shape[1]
    diff = np.abs(np.asarray(recomputed)[: len(out.tokens), P:] - out.logprobs)[out.mask == 1]
    return {
        f"sampled {sp.n} x {sp.max_new_tokens} tokens at T={sp.temperature} incl. compile (s)": (
            f"{t_sample:.2f}"
        ),
        "sampled response lengths": str(out.mask.sum(1).tolist()),
        "sampled vs recomputed max |log-prob diff|": f"{diff.max():.2e}",
    }


def digit_reward(tokenizer):
    """The synthetic task's reward: the fraction of a response's tokens that are all digits."""
    vocab = len(tokenizer)
    digits = np.array([tokenizer.decode([i]).strip().isdigit() for i in range(vocab)])

    def reward(out, group):
        del group
        hits = digits[np.clip(out.tokens, 0, vocab - 1)] * out.mask
        return hits.sum(1) / np.maximum(out.mask.sum(1), 1)

    return reward


def train(config, mesh, model=None, tokenizer=None) -> list[dict]:
    """`config.train.steps` RL steps on the synthetic task; returns each step's metrics."""
    check_sizes(config, mesh)  # before anything is built or compiled
    if model is None:
        model, tokenizer = from_config.build(config.model, mesh, config.workdir, config.seed)
    trainer = Trainer(config, model, tokenizer, mesh, digit_reward(tokenizer))
    questions = [f"What is {a} + {b}?" for a in range(10) for b in range(10)]
    position = 0

    def next_prompts():
        nonlocal position
        batch = []
        for _ in range(config.train.prompts_per_step):
            message = [{"role": "user", "content": questions[position % len(questions)]}]
            text = tokenizer.apply_chat_template(
                message, add_generation_prompt=True, tokenize=False
            )
            batch.append(tokenizer(text)["input_ids"])
            position += 1
        return batch

    history = []
    for i in range(config.train.steps):
        t0 = time.perf_counter()
        metrics = trainer.step(next_prompts)
        metrics["seconds"] = time.perf_counter() - t0
        history.append(metrics)
        log.info(
            "step %d/%d %s: loss %.4f reward %.3f grad norm %.3f (%.1f s)",
            i + 1,
            config.train.steps,
            config.algorithm.name,
            metrics["loss"],
            metrics["reward/mean"],
            metrics["grad_norm"],
            metrics["seconds"],
        )
    return history


def main(argv) -> None:
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config = _CONFIG.value
    init_distributed(config.distributed)
    mesh = mesh_lib.make_mesh(dict(config.mesh))
    os.makedirs(config.workdir, exist_ok=True)
    check_sizes(config, mesh)
    with jax.set_mesh(mesh):  # the context mesh: bare PartitionSpecs resolve against it
        t0 = time.perf_counter()
        model, tokenizer = from_config.build(config.model, mesh, config.workdir, config.seed)
        figures = smoke(config, mesh, model, tokenizer, time.perf_counter() - t0)
        # The trainer starts from the same (immutable) parameters the smoke checks used.
        history = train(config, mesh, model, tokenizer)
    if jax.process_index() == 0:
        width = max(map(len, figures))
        print("\nflowrl-jax: decoder, sampler, log-probs, export")
        for key, value in figures.items():
            print(f"  {key:<{width}}  {value}")
        print(f"\n{config.algorithm.name}: {len(history)} RL steps on the digits task")
        for i, m in enumerate(history):
            print(
                f"  step {i + 1}: loss {m['loss']:.4f}  reward {m['reward/mean']:.3f}  "
                f"grad norm {m['grad_norm']:.3f}  {m['seconds']:.1f} s"
            )


if __name__ == "__main__":
    app.run(main)
