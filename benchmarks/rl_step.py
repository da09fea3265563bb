"""One whole RL step: our fused and phased GRPO steps and fused FlowRL step against Tunix 0.1.7's
GRPO learner, in one process, on identical work.

    pip install -r requirements-bench.txt   # its own venv: google-tunix 0.1.7 wants safetensors<0.8
    python -m benchmarks.rl_step [--steps 6] [--no-tunix]

The work of every row, every step: a tiny Qwen3-shaped model (tiny.BENCH_HF_CONFIGS['tiny']:
hidden 256, 4 layers, 4 heads of 64, 2 kv-heads, ffn 1024, vocab 512), fp32, one set of random
weights written as an HF checkpoint that both sides load; 8 prompts of 32 tokens x 8 samples, 128
new tokens at temperature 1 with top-p 1 (Tunix samples only under top-p or top-k; EOS is an id
outside the vocabulary on both sides, so every row samples 128 tokens); reward = the fraction of
even token ids in the response (compiled on our side, a Python function of the decoded text on
Tunix's, as each is used); reference log-probs for the KL term (GRPO beta = kl_coef = 0.04; FlowRL
uses them in its loss); one AdamW update on the whole batch of 64 (clip 1.0, weight decay 0.1).
Ours is the trainer as users run it (`Trainer.fused_step` / `Trainer.step`), with the settings
benchmarks/train_step.py found fastest here: remat 'dots' and 4 micro-batches (the same update);
one more row runs the fused GRPO step at the trainer's defaults (no remat, 1 micro-batch). Tunix
runs at its defaults.

Tunix's learner drives its own loop over a dataset iterator, asking for the next batch when the
previous step has finished. The iterator here times Tunix's step, then runs one step of each of our
rows before it hands over the next batch: rows interleave in rounds (Tunix, then each of ours in an
order rotated every round). Round 1 holds every compile and is reported apart; the table gives
medians over the later rounds and the ratio columns medians (min-max) of Tunix's step time over ours
within each round. Per phase: the phased loop's own timers; the fused program's timestamps, sent to the host
as each phase ends (`train.fused_phase_times`, on by default); Tunix's generate, reference
log-probs, rewards and actor update, each timed by a wrapper that waits for its result. The last line reads
`rl_step_vs_tunix grpo=<x> flowrl=<y>` (Tunix seconds per step over our fused step's). `--plot`
draws the per-phase medians as stacked bars.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

PROMPTS, GROUP, PROMPT_LEN, NEW = 8, 8, 32, 128
KL = 0.04
LEARNING_RATE = 1e-6
# name: (algorithm, fused, tuned). Tuned: remat 'dots' and 4 micro-batches; untuned: the trainer's
# defaults (remat 'none', 1 micro-batch), to show what the tuning is worth.
ROWS = {
    "ours fused GRPO": ("grpo", True, True),
    "ours phased GRPO": ("grpo", False, True),
    "ours fused FlowRL": ("flowrl", True, True),
    "ours fused GRPO, defaults": ("grpo", True, False),
}
PHASES = ("rollout", "reward", "logprobs", "update")


class IdTokenizer:
    """Text is token ids written in decimal, space-separated: no tokenizer cost on either side.
    Serves both interfaces: Tunix's (encode, decode, bos_id, eos_id, pad_id) and the one our
    trainer uses (pad_token_id, eos_token_id, decode, batch_decode, len)."""

    def __init__(self, vocab: int):
        self.vocab = vocab
        self.pad_token_id = 0
        self.eos_token_id = vocab  # outside the vocabulary: no row stops early

    def __len__(self):
        return self.vocab

    def encode(self, text: str, **_) -> list[int]:
        return [int(t) for t in text.split()]

    def decode(self, ids, **_) -> str:
        return " ".join(str(int(i)) for i in ids)

    def batch_decode(self, rows, **_) -> list[str]:
        return [self.decode(r) for r in rows]

    def bos_id(self):
        return None  # Tunix prepends a BOS only when this is set

    def eos_id(self) -> int:
        return self.eos_token_id

    def pad_id(self) -> int:
        return self.pad_token_id


def even_fraction(text: str) -> float:
    ids = [int(t) for t in text.split()]
    return sum(i % 2 == 0 for i in ids) / len(ids) if ids else 0.0


def make_task(prompts: int | None = None):
    from flowrl_jax.tasks import Task

    prompts = prompts or PROMPTS

    def jit_reward(tokenizer):
        del tokenizer

        def reward(out, rows):
            del rows
            mask = out.mask.astype(jnp.float32)
            even = (out.tokens % 2 == 0).astype(jnp.float32) * mask
            return jnp.sum(even, 1) / jnp.maximum(jnp.sum(mask, 1), 1.0)

        return reward

    return Task(
        "even_ids",
        [f"prompt {i}" for i in range(prompts)],
        lambda text, row: even_fraction(text),
        make_jit_reward=jit_reward,
    )


def write_checkpoint(path: str):
    """Random weights for the tiny benchmark model, as an HF checkpoint directory."""
    from flowrl_jax.models import tiny
    from flowrl_jax.models.decoder import init_params
    from flowrl_jax.models.families import config_from_hf
    from flowrl_jax.models.hf_io import save_hf
    from flowrl_jax.models.model import Model

    hf = dict(tiny.BENCH_HF_CONFIGS["tiny"])
    cfg = config_from_hf(hf)
    params = jax.jit(init_params, static_argnums=0)(cfg, jax.random.key(0))
    save_hf(Model(cfg, params, hf_config=hf), path, overwrite=True)
    return hf


def our_trainer(
    path: str,
    algorithm: str,
    fused: bool,
    tuned: bool,
    mesh,
    workdir: str,
    model=None,
    settings=None,
    **shape,
):
    """Our trainer on the benchmark's task, its model loaded from `path` (or `model` as given);
    `shape` may set prompts, prompt_len and new (default: this benchmark's); `settings`, more
    config keys ({"rollout.slots": 8}), set last."""
    from flowrl_jax.config import base_config
    from flowrl_jax.models import load_hf
    from flowrl_jax.trainer.loop import Trainer

    prompts = shape.pop("prompts", PROMPTS)  # read at call time: tests set the module's
    prompt_len, new = shape.pop("prompt_len", PROMPT_LEN), shape.pop("new", NEW)
    assert not shape, shape

    config = base_config()
    config.workdir = workdir
    config.algorithm.name = algorithm
    if algorithm == "grpo":
        config.algorithm.grpo.kl_coef = KL
    config.rollout.n = GROUP
    config.rollout.max_new_tokens = new
    config.rollout.temperature = 1.0
    config.rollout.prompt_buckets = (prompt_len,)
    config.train.prompts_per_step = prompts
    config.train.minibatch_size = 0  # the whole rollout batch in one optimiser step
    config.train.micro_batches = 4 if tuned else 1
    config.train.fused = "true" if fused else "false"
    config.optimizer.learning_rate = LEARNING_RATE
    config.optimizer.warmup_steps = 0
    for key, value in (settings or {}).items():
        section, name = key.split(".")
        config[section][name] = value
    if model is None:
        model = load_hf(path, mesh=mesh, remat="dots" if tuned else "none")
    tokenizer = IdTokenizer(model.cfg.vocab_size)
    trainer = Trainer(config, model, tokenizer, mesh, make_task(prompts))
    trainer.sp = dataclasses.replace(trainer.sp, stop_tokens=())  # every row samples NEW tokens
    return trainer


def tunix_learner(path: str, hf: dict, phase_times: dict, new: int = NEW):
    """Tunix's GRPO learner on the same checkpoint, `new` tokens per response, with each phase
    wrapped in a timer."""
    import optax
    from flax.nnx import state as nnx_state
    from tunix.models.qwen3 import model as qwen3
    from tunix.models.qwen3 import params as qwen3_params
    from tunix.rl import rl_cluster as rl
    from tunix.rl.grpo import grpo_learner
    from tunix.rl.rollout import base_rollout

    config = qwen3.ModelConfig(
        num_layers=hf["num_hidden_layers"],
        vocab_size=hf["vocab_size"],
        embed_dim=hf["hidden_size"],
        hidden_dim=hf["intermediate_size"],
        num_heads=hf["num_attention_heads"],
        head_dim=hf["head_dim"],
        num_kv_heads=hf["num_key_value_heads"],
        rope_theta=int(hf["rope_theta"]),
        norm_eps=hf["rms_norm_eps"],
        use_tied_embedding=hf["tie_word_embeddings"],
    )
    auto = (jax.sharding.AxisType.Auto,) * 2  # Tunix's models expect Auto axes
    mesh = jax.make_mesh((1, 1), ("fsdp", "tp"), axis_types=auto, devices=jax.devices()[:1])
    with jax.set_mesh(mesh):
        actor = qwen3_params.create_model_from_safe_tensors(path, config, mesh)
        reference = qwen3_params.create_model_from_safe_tensors(path, config, mesh)
    tokenizer = IdTokenizer(hf["vocab_size"])
    cluster = rl.RLCluster(
        actor=actor,
        reference=reference,
        tokenizer=tokenizer,
        cluster_config=rl.ClusterConfig(
            role_to_mesh={rl.Role.ACTOR: mesh, rl.Role.REFERENCE: mesh, rl.Role.ROLLOUT: mesh},
            rollout_engine="vanilla",
            offload_to_cpu=False,
            training_config=rl.RLTrainingConfig(
                actor_optimizer=optax.chain(
                    optax.clip_by_global_norm(1.0),
                    optax.adamw(LEARNING_RATE, weight_decay=0.1),
                ),
                eval_every_n_steps=10**9,
                max_steps=10**9,  # the data iterator ends the run
            ),
            rollout_config=base_rollout.RolloutConfig(
                max_tokens_to_generate=new,
                max_prompt_length=PROMPT_LEN,
                kv_cache_size=PROMPT_LEN + new,
                temperature=1.0,
                top_p=1.0,
                top_k=None,
                eos_tokens=[tokenizer.eos_token_id],
            ),
        ),
    )

    def reward(prompts, completions, **_):
        return [even_fraction(c) for c in completions]

    learner = grpo_learner.GRPOLearner(
        rl_cluster=cluster,
        algo_config=grpo_learner.GRPOConfig(
            num_generations=GROUP, num_iterations=1, beta=KL, epsilon=0.2
        ),
        reward_fns=reward,
    )

    def timed(phase, fn, wait):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            t0 = time.perf_counter()
            result = fn(*args, **kwargs)
            wait(result)
            phase_times[phase] += time.perf_counter() - t0
            return result

        return call

    def wait_actor(_):
        jax.block_until_ready(jax.tree.leaves(nnx_state(actor)))

    cluster.generate = timed("rollout", cluster.generate, lambda r: None)  # returns host lists
    cluster.get_ref_per_token_logps = timed(
        "logprobs", cluster.get_ref_per_token_logps, jax.block_until_ready
    )
    learner._compute_rewards = timed("reward", learner._compute_rewards, lambda r: None)
    cluster.update_actor = timed("update", cluster.update_actor, wait_actor)
    return learner, wait_actor


@dataclasses.dataclass
class Row:
    steps: list[float] = dataclasses.field(default_factory=list)  # seconds, round by round
    phases: list[dict] = dataclasses.field(default_factory=list)

    def median(self, key=None) -> float:
        later = self.steps[1:] if key is None else [p.get(key, np.nan) for p in self.phases[1:]]
        return statistics.median(later)


def run(steps: int, with_tunix: bool) -> dict[str, Row]:
    from flowrl_jax import mesh as mesh_lib

    rows = {name: Row() for name in [*ROWS] + (["Tunix GRPO"] if with_tunix else [])}
    rng = np.random.default_rng(0)
    prompts = rng.integers(3, 512, (PROMPTS, PROMPT_LEN)).tolist()
    draw = lambda: (prompts, list(range(PROMPTS)))  # the same prompts every step, every row
    mesh = mesh_lib.make_mesh({}, jax.devices()[:1])
    with tempfile.TemporaryDirectory() as tmp:
        hf = write_checkpoint(f"{tmp}/ckpt")
        with jax.set_mesh(mesh):
            ours = {
                name: our_trainer(f"{tmp}/ckpt", *how, mesh, f"{tmp}/{i}")
                for i, (name, how) in enumerate(ROWS.items())
            }

        def our_round(index: int):
            names = step_round(ours, rows, index, draw, mesh, NEW)
            print(
                f"round {index + 1}/{steps}: "
                + "  ".join(f"{k} {rows[k].steps[-1]:.2f} s" for k in names)
                + (f"  Tunix GRPO {rows['Tunix GRPO'].steps[-1]:.2f} s" if with_tunix else ""),
                flush=True,
            )

        if not with_tunix:
            for i in range(steps):
                our_round(i)
            return rows

        race_tunix(f"{tmp}/ckpt", hf, prompts, steps, rows["Tunix GRPO"], our_round)
    return rows


def step_round(ours: dict, rows: dict, index: int, draw, mesh, length_max: int) -> list[str]:
    """One RL step of each of our trainers, timed into `rows`, in an order rotated each round: a
    program run right after another framework's step can fault in fresh pages that step returned
    to the OS (BENCHMARKS.md, issue #5), so no row keeps the seat after Tunix. -> the order."""
    names = list(ours)
    names = names[index % len(names) :] + names[: index % len(names)]
    with jax.set_mesh(mesh):
        for name in names:
            trainer = ours[name]
            t0 = time.perf_counter()
            step = trainer.fused_step if trainer.fused else trainer.step
            metrics = step(draw)
            rows[name].steps.append(time.perf_counter() - t0)
            rows[name].phases.append(
                {p: metrics[f"time/{p}"] for p in PHASES if f"time/{p}" in metrics}
            )
            assert np.isfinite(metrics["loss"]), (name, metrics["loss"])
            assert metrics["response/length_max"] == length_max
    return names


def race_tunix(path, hf, prompts, steps: int, row: Row, our_round, new: int = NEW):
    """Tunix's learner on `steps` batches of `prompts`, each of our rounds run between two of its
    steps: Tunix asks for a batch when its previous step is done, so the iterator times that
    step, runs our_round(i), then hands over the next batch. Tunix's step times go to `row`."""
    phase_times = collections.defaultdict(float)
    learner, wait_actor = tunix_learner(path, hf, phase_times, new)
    texts = np.array([" ".join(map(str, p)) for p in prompts])

    def batches():
        started = time.perf_counter()  # Tunix's first step starts: its setup counts there
        yield {"prompts": texts}  # train() reads the first batch before its first step
        for i in range(steps):
            wait_actor(None)
            row.steps.append(time.perf_counter() - started)
            row.phases.append(dict(phase_times))
            phase_times.clear()
            our_round(i)
            started = time.perf_counter()
            if i + 1 < steps:
                yield {"prompts": texts}

    learner.train(batches())


def report(rows: dict[str, Row]) -> tuple[float, float]:
    print(
        f"\n{PROMPTS} prompts x {GROUP} samples, prompt {PROMPT_LEN} + {NEW} new tokens, tiny Qwen3, "
        f"fp32, {jax.devices()[0].device_kind}; medians over rounds 2-{len(next(iter(rows.values())).steps)}"
    )
    tunix = rows.get("Tunix GRPO")
    head = f"{'row':<26} {'first s':>8} {'step s':>7} " + " ".join(f"{p:>9}" for p in PHASES)
    print(head + ("  Tunix / row (min-max)" if tunix else ""))
    ratios = {}
    for name, row in rows.items():
        phases = " ".join(
            f"{row.median(p):>9.3f}" if not np.isnan(row.median(p)) else f"{'-':>9}" for p in PHASES
        )
        line = f"{name:<26} {row.steps[0]:>8.2f} {row.median():>7.3f} {phases}"
        if tunix and row is not tunix:
            r = sorted(t / o for t, o in zip(tunix.steps[1:], row.steps[1:]))
            ratios[name] = statistics.median(r)
            line += f"  {ratios[name]:.2f} ({r[0]:.2f}-{r[-1]:.2f})"
        print(line)
    if not tunix:
        return float("nan"), float("nan")
    return ratios["ours fused GRPO"], ratios["ours fused FlowRL"]


def plot(rows: dict[str, Row], path: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(names) + 1.5))
    left = np.zeros(len(names))
    for phase in (*PHASES, "other"):
        if phase == "other":  # the step's remainder: host work between and around the phases
            widths = [r.median() - np.nansum([r.median(p) for p in PHASES]) for r in rows.values()]
        else:
            widths = np.nan_to_num([r.median(phase) for r in rows.values()])
        ax.barh(names, widths, left=left, label=phase)
        left += widths
    ax.invert_yaxis()
    ax.set_xlabel("seconds per RL step (median after the first)")
    ax.set_title(
        f"One GRPO/FlowRL step: {PROMPTS}x{GROUP} samples, {PROMPT_LEN}+{NEW} tokens, fp32"
    )
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=5, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


def arguments(doc: str, plot: bool = True, more=None) -> argparse.Namespace:
    """The race's command line (--steps, --no-tunix, --plot, and what more(parser) adds),
    checked: Tunix must import."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6, help="rounds, the first holding compiles")
    parser.add_argument("--no-tunix", action="store_true", help="our rows only")
    if plot:
        parser.add_argument("--plot", default="", help="a PNG of the per-phase medians")
    if more:
        more(parser)
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be >= 2: the first round compiles")
    if not args.no_tunix:
        try:
            import tunix  # noqa: F401
        except ImportError:
            parser.error(
                "Tunix is not installed: `pip install -r requirements-bench.txt` in a venv of its "
                "own (google-tunix 0.1.7 needs safetensors<0.8), or pass --no-tunix"
            )
    return args


def main():
    args = arguments(__doc__)
    rows = run(args.steps, not args.no_tunix)
    grpo, flowrl = report(rows)
    if args.plot:
        plot(rows, args.plot)
    print(f"rl_step_vs_tunix grpo={grpo:.2f} flowrl={flowrl:.2f}")


if __name__ == "__main__":
    main()
