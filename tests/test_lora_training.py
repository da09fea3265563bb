"""LoRA in the trainer (config.lora): only the adapters and heads are trained and have optimiser
state, the reference policy is the base model, the fused step equals the phased loop, a killed run
resumes exactly from checkpoints that hold the adapters alone, and both exports (merged for
`transformers`, adapters for `peft`) give our model's logits."""

import json
import os
import signal

import jax
import jobs
import numpy as np
import orbax.checkpoint as ocp
import pytest
from test_fused import make_trainer, phased_and_fused, prompt_source

from flowrl_jax import mesh as mesh_lib
from flowrl_jax import testing
from flowrl_jax.config import base_config
from flowrl_jax.export import export
from flowrl_jax.models import forward, from_config, lora
from flowrl_jax.rollout.logprobs import token_logprobs
from flowrl_jax.trainer import step as step_lib
from flowrl_jax.trainer.restore import load_run_policy
from flowrl_jax.trainer.run import train

LORA = {"lora.rank": 4, "lora.alpha": 8.0}
SKIP = ("time/", "perf/", "rollout/tokens_per_s", "train/tokens_per_s")


def leaves(tree) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in lora.flat(tree).items()}


@pytest.fixture(scope="module")
def mesh():
    return mesh_lib.make_mesh({}, jax.devices()[:1])


@pytest.mark.parametrize(
    "algorithm, head, extra",
    [
        ("flowrl", "logz_head", {}),
        ("ppo", "value_head", {}),
        (
            "flowrl",
            "logz_head",
            {"lora.dropout": 0.1, "train.pack_length": 96, "task.max_prompt_len": 32},
        ),
    ],
)
def test_only_adapters_and_heads_train(tmp_path, mesh, algorithm, head, extra):
    with jax.set_mesh(mesh):
        trainer, tokenizer = make_trainer(tmp_path, algorithm, mesh, changes=LORA | extra)
        assert trainer.model.cfg.lora_dropout == extra.get("lora.dropout", 0.0)
        before = leaves(trainer.state.params)
        draw = prompt_source(tokenizer, trainer.task, 2)
        for _ in range(2):
            trainer.step(draw)
        after = leaves(trainer.state.params)
    assert before.keys() == after.keys()
    adapters = [k for k in before if lora.is_adapter(k)]
    assert len(adapters) == 2 * 7 and all("/layers/" in f"/{k}" for k in adapters)
    for k in before:
        if lora.is_adapter(k) or k.startswith(f"{head}/"):
            assert not np.array_equal(before[k], after[k]), f"{k} did not train"
        else:
            np.testing.assert_array_equal(after[k], before[k], err_msg=f"{k} changed")
    assert after["policy/layers/attn/q_proj/lora_b"].any()  # B moved off zero
    assert any(k.startswith(f"{head}/") for k in before)
    # Adam's two moments for exactly the trained arrays, none for the frozen base.
    trainable, frozen = lora.split(trainer.state.params)
    moments = [x for x in jax.tree.leaves(trainer.state.opt_state) if x.ndim]
    assert sum(x.size for x in moments) == 2 * sum(x.size for x in jax.tree.leaves(trainable))
    frozen_keys = {f"policy/{k}" for k in lora.flat(frozen["policy"])}
    assert frozen_keys == {k for k in before if k.startswith("policy/") and not lora.is_adapter(k)}


def test_reference_is_the_base_model(tmp_path, mesh):
    with jax.set_mesh(mesh):
        trainer, tokenizer = make_trainer(tmp_path, "flowrl", mesh, changes=LORA)
        assert trainer.ref_params == {}  # no second copy of the weights
        draw = prompt_source(tokenizer, trainer.task, 2)
        for _ in range(2):
            trainer.step(draw)
        # An untouched model of the same seed: the run's base, built again.
        config = base_config()
        original, _ = from_config.build(config.model, mesh, config.seed)
        prompts, _ = draw()
        tokens, mask, _ = trainer.sampler.pad(prompts)
        spec = trainer._spec(tokens.shape[1] // 2)
        state = trainer.state
        ref, _ = step_lib.score(spec, state.params, trainer.ref_params, tokens, mask)
        expected = token_logprobs(original.cfg, original.params, tokens, mask)[:, spec.prompt_len :]
        policy = token_logprobs(trainer.model.cfg, state.params["policy"], tokens, mask)
    np.testing.assert_array_equal(np.asarray(ref), np.asarray(expected))
    diff = np.abs(np.asarray(policy)[:, spec.prompt_len :] - np.asarray(expected))
    assert (diff * np.asarray(mask)[:, spec.prompt_len :]).max() > 1e-4  # the adapters moved it


@pytest.mark.parametrize(
    "sampler",  # -m slow for CI's time: the slots-and-packing case runs the fused step with LoRA
    [pytest.param("static", marks=pytest.mark.slow), "slots_and_packing"],
)
def test_fused_equals_phased_with_lora(tmp_path, mesh, sampler):
    """The fused step runs the adapted model without merging: in its sampler (the static batch,
    or refilling slots with packed scoring and update) and its update, equal to the phased loop
    with the static batch (tolerances as tests/test_slots.py's)."""
    slots, fused_changes, tol = (0, 0), LORA, 1e-6
    if sampler == "slots_and_packing":
        packed = {"train.pack_length": 96, "task.max_prompt_len": 32}
        slots, fused_changes, tol = (0, 3), LORA | packed, 1e-5
    (phased, p_params), (fused, f_params) = phased_and_fused(
        tmp_path, "flowrl", mesh, slots=slots, changes=(LORA, fused_changes)
    )
    for a, b in zip(phased, fused):
        for k in sorted(k for k in a if not k.startswith(SKIP)):
            np.testing.assert_allclose(b[k], a[k], rtol=tol, atol=tol, err_msg=k)
    assert lora.adapted(p_params["policy"])
    for k, x in leaves(p_params).items():
        np.testing.assert_allclose(leaves(f_params)[k], x, rtol=0, atol=tol, err_msg=k)


STEPS = 6


def metrics(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [{k: v for k, v in r.items() if not k.startswith(SKIP)} for r in rows]


def saved(workdir, step):
    with ocp.CheckpointManager(os.path.join(workdir, "checkpoints")) as manager:
        got = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return got["state"]


def test_killed_lora_run_resumes_exactly(tmp_path):
    args = (
        f"--config.train.steps={STEPS}",
        "--config.checkpoint.every=2",
        "--config.lora.rank=4",
        "--config.optimizer.learning_rate=1e-3",
    )
    plain, broken = str(tmp_path / "plain"), str(tmp_path / "broken")
    out = jobs.start(plain, *args).communicate(timeout=600)[0]
    assert "step 6/6" in out, out[-3000:]
    job = jobs.start(broken, *args)
    jobs.read_until(job, f"step 4/{STEPS}")
    job.send_signal(signal.SIGKILL)
    job.wait()
    out = jobs.start(broken, *args).communicate(timeout=600)[0]
    assert "resuming after RL step" in out, out[-3000:]
    assert metrics(plain) == metrics(broken)
    a, b = saved(plain, STEPS), saved(broken, STEPS)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(y), np.asarray(x), err_msg=str(path))
    # The checkpoint holds the adapters and the head, not the base weights.
    policy = lora.flat(a["params"]["policy"])
    assert policy and all(lora.is_adapter(k) for k in policy), sorted(policy)
    assert "logz_head" in a["params"]


def test_merged_and_adapter_exports_give_our_logits(tmp_path, mesh):
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    ckpt = str(tmp_path / "base")
    testing.make_torch_checkpoint("qwen2", ckpt, seed=2)  # q/k/v biases, tied embeddings
    testing.make_tiny_tokenizer(ckpt)
    config = base_config()
    config.workdir = str(tmp_path / "run")
    config.model.checkpoint = ckpt
    config.lora.rank, config.lora.alpha = 4, 8.0
    config.optimizer.learning_rate = 1e-2  # adapters that move the logits in two steps
    with jax.set_mesh(mesh):
        train(config, mesh)
    ours, _, _ = load_run_policy(config.workdir, mesh=mesh)
    assert lora.adapted(ours.params)
    tokens, mask = testing.left_padded_batch(0, batch=3, length=20, vocab=512, min_len=5)
    logits = np.asarray(forward(ours.cfg, ours.params, tokens, mask).logits)
    valid = mask.astype(bool)
    scale = np.abs(logits[valid]).max()

    merged = export(config.workdir, out=str(tmp_path / "merged"), mesh=mesh)
    hf = transformers.AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    got = testing.torch_logits(hf, tokens, mask)
    assert np.abs(got[valid] - logits[valid]).max() <= 1e-4 * scale

    adapters = export(config.workdir, out=str(tmp_path / "adapters"), mesh=mesh, adapters=True)
    assert sorted(os.listdir(adapters)) >= ["adapter_config.json", "adapter_model.safetensors"]
    base = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    base_logits = testing.torch_logits(base, tokens, mask)
    assert np.abs(base_logits[valid] - logits[valid]).max() > 100 * 1e-4 * scale  # trained
    with_peft = peft.PeftModel.from_pretrained(base, adapters).eval()
    got = testing.torch_logits(with_peft, tokens, mask)
    assert np.abs(got[valid] - logits[valid]).max() <= 1e-4 * scale


def test_adapter_export_of_a_full_run_is_refused(tmp_path, mesh):
    config = base_config()
    config.workdir = str(tmp_path / "run")
    config.train.steps = 1
    with jax.set_mesh(mesh):
        train(config, mesh)
    with pytest.raises(ValueError, match="trained no LoRA adapters"):
        export(config.workdir, out=str(tmp_path / "x"), mesh=mesh, adapters=True)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"targets": ["attn/qq_proj"]}, "matches no parameter"),
        ({"targets": ["embed"]}, "embed/embedding, which the adapters cannot sit on"),
        ({"rank": 1000}, "lora.rank=1000 exceeds"),
        ({"rank": -1}, "lora.rank"),
        ({"alpha": 0.0}, "lora.alpha"),
    ],
)
def test_bad_lora_settings_fail_the_check(tmp_path, mesh, change, message):
    """Refused by the run's one check, before a weight is read or a program compiled."""
    from flowrl_jax.trainer import run

    config = base_config()
    config.workdir = str(tmp_path)
    config.lora.rank = 4
    for key, value in change.items():
        config.lora[key] = value
    with pytest.raises(ValueError, match=message):
        run.check(config, mesh)
    assert not os.listdir(tmp_path)


def test_lora_warm_up_then_lora_rl(tmp_path, mesh):
    """SFT trains adapters on the frozen base; RL goes on from them with the warm-up model (base +
    the warm-up's adapters, a copy) as its reference; both phases' checkpoints hold adapters."""
    from flowrl_jax.trainer import run as run_lib
    from flowrl_jax.trainer import sft as sft_lib
    from flowrl_jax.trainer.loop import Trainer

    config = base_config()
    config.workdir = str(tmp_path / "run")
    config.task.name = "countdown"
    config.sft.steps, config.sft.batch_size, config.sft.optimizer.warmup_steps = 4, 8, 1
    config.sft.optimizer.learning_rate = 1e-2
    config.lora.rank, config.lora.alpha = 4, 8.0
    with jax.set_mesh(mesh):
        checked = run_lib.check(config, mesh)
        model, tokenizer = from_config.build(config.model, mesh, config.seed)
        base = leaves(model.params)
        warm = sft_lib.run(config, mesh, model, tokenizer, checked.demos)
        losses = [m["sft/loss"] for m in warm.history]
        assert losses[-1] < losses[0]
        warm_policy = leaves(warm.model.params)
        for k, x in base.items():  # the base untouched, the adapters trained
            np.testing.assert_array_equal(warm_policy[k], x, err_msg=k)
        assert warm_policy["layers/mlp/up_proj/lora_b"].any()
        warm_cfg = warm.model.cfg

        trainer = Trainer(config, warm.model, tokenizer, mesh, checked.task)
        ref = leaves(trainer.ref_params)
        assert ref.keys() == {k for k in warm_policy if lora.is_adapter(k)}
        for k, x in ref.items():
            np.testing.assert_array_equal(x, warm_policy[k], err_msg=k)
        draw = prompt_source(tokenizer, checked.task, 2)
        for _ in range(2):
            trainer.step(draw)
        tokens, mask, _ = trainer.sampler.pad(draw()[0])
        spec = trainer._spec(tokens.shape[1] // 2)
        ref_logp, _ = step_lib.score(spec, trainer.state.params, trainer.ref_params, tokens, mask)
        warm_params = lora.with_adapters(lora.base(trainer.state.params["policy"]), ref)
        expected = token_logprobs(warm_cfg, warm_params, tokens, mask)[:, spec.prompt_len :]
        np.testing.assert_array_equal(np.asarray(ref_logp), np.asarray(expected))
        moved = leaves(trainer.state.params["policy"])["layers/mlp/up_proj/lora_b"]
        assert not np.array_equal(moved, warm_policy["layers/mlp/up_proj/lora_b"])

    # The whole run in one command, read back: each phase's policy is base + its adapters.
    config.workdir = str(tmp_path / "whole")
    config.train.steps = 2
    with jax.set_mesh(mesh):
        train(config, mesh)
    sft_model, _, _ = load_run_policy(config.workdir, mesh=mesh, sft_phase=True)
    for k, x in leaves(sft_model.params).items():
        np.testing.assert_array_equal(x, warm_policy[k], err_msg=k)
    for phase in ("sft/checkpoints", "checkpoints"):
        with ocp.CheckpointManager(os.path.join(config.workdir, phase)) as manager:
            got = manager.restore(
                manager.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore())
            )["state"]
        policy = lora.flat(got["params"]["policy"])
        assert policy and all(lora.is_adapter(k) for k in policy), phase


def test_full_warm_up_then_lora_rl(tmp_path, mesh):
    """lora.sft=False (the default job's choice): the warm-up fine-tunes the whole model, RL's
    adapters sit on it; the run reads back as the warm-up model plus RL's adapters."""
    config = base_config()
    config.workdir = str(tmp_path / "run")
    config.task.name = "countdown"
    config.sft.steps, config.sft.batch_size, config.sft.optimizer.warmup_steps = 4, 8, 1
    config.lora.rank, config.lora.sft = 4, False
    config.optimizer.learning_rate = 1e-2
    with jax.set_mesh(mesh):
        train(config, mesh)
        original, _ = from_config.build(config.model, mesh, config.seed)
    warm, _, _ = load_run_policy(config.workdir, mesh=mesh, sft_phase=True)
    rl, _, _ = load_run_policy(config.workdir, mesh=mesh)
    assert not lora.adapted(warm.params) and lora.adapted(rl.params)
    warm_leaves, rl_leaves = leaves(warm.params), leaves(rl.params)
    changed = [
        k for k, x in leaves(original.params).items() if not np.array_equal(x, warm_leaves[k])
    ]
    assert "layers/mlp/up_proj/kernel" in changed  # the warm-up trained the whole model
    for k, x in warm_leaves.items():  # RL's base is the warm-up model
        np.testing.assert_array_equal(rl_leaves[k], x, err_msg=k)
    assert rl_leaves["layers/attn/v_proj/lora_b"].any()
    with ocp.CheckpointManager(os.path.join(config.workdir, "sft/checkpoints")) as manager:
        got = manager.restore(
            manager.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore())
        )["state"]
    assert "embedding" in got["params"]["policy"]["embed"]  # a full warm-up saves the model


def test_lora_on_eight_devices_equals_one(tmp_path):
    """Adapters sharded by their kernels' rules (A as the input, B as the output) on fsdp=4 x
    tensor=2: two fused LoRA steps equal one device's (1e-5)."""
    from flowrl_jax.trainer.loop import Trainer

    def run(mesh, workdir):
        config = base_config()
        config.workdir = str(workdir)
        config.train.prompts_per_step = 4  # fills the batch bucket of data x fsdp = 4
        config.train.minibatch_size = 8
        config.lora.rank, config.lora.alpha = 4, 8.0  # the engine's learning rate (1e-4)
        with jax.set_mesh(mesh):
            model, tokenizer = from_config.build(config.model, mesh, config.seed)
            trainer = Trainer(config, model, tokenizer, mesh, trainer_task())
            draw = prompt_source(tokenizer, trainer.task, 4)
            history = [trainer.fused_step(draw) for _ in range(2)]
            q = trainer.state.params["policy"]["layers"]["attn"]["q_proj"]
            specs = {k: (v.sharding.spec, len(v.sharding.device_set)) for k, v in q.items()}
            return history, leaves(trainer.state.params), specs

    one, one_params, _ = run(mesh_lib.make_mesh({}, jax.devices()[:1]), tmp_path / "one")
    eight, eight_params, specs = run(
        mesh_lib.make_mesh({"fsdp": 4, "tensor": 2}), tmp_path / "eight"
    )
    P = jax.sharding.PartitionSpec
    assert specs["lora_a"] == (P(None, "fsdp", None), 8)
    assert specs["lora_b"] == (P(None, None, "tensor"), 8)
    for a, b in zip(one, eight):
        for k in sorted(k for k in a if not k.startswith(SKIP)):
            np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-5, err_msg=k)
    assert one_params["policy/layers/attn/q_proj/lora_b"].any()
    for k, x in one_params.items():
        np.testing.assert_allclose(eight_params[k], x, rtol=0, atol=1e-5, err_msg=k)


def trainer_task():
    from flowrl_jax.tasks import digits

    return digits.task()
