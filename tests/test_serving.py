"""What leaves a run for serving: the export is a directory `transformers` serves as it is (token ids,
generation_config.json, readable mode, any dtype name), and rollout.stop_tokens end responses in
training, in evaluation and in the export's generation config."""

import json
import os
import stat

import jax
import numpy as np
import pytest

from flowrl_jax import mesh as mesh_lib
from flowrl_jax import testing
from flowrl_jax.config import base_config
from flowrl_jax.evaluation import sampled
from flowrl_jax.export import main as export_main
from flowrl_jax.models import Model, from_config, load_tokenizer
from flowrl_jax.rollout import sampler as sampler_lib
from flowrl_jax.tasks import digits
from flowrl_jax.trainer.run import run

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A one-step run of the default job with a stop token besides EOS."""
    workdir = tmp_path_factory.mktemp("run")
    config = base_config()
    config.workdir, config.train.steps = str(workdir), 1
    config.rollout.stop_tokens = "<|endoftext|>"
    mesh = mesh_lib.make_mesh({"fsdp": 1}, jax.devices()[:1])
    with jax.set_mesh(mesh):
        model, tokenizer = from_config.build(config.model, mesh, config.seed)
        run(config, mesh, model, tokenizer, digits.task())
    return workdir, tokenizer


def test_the_export_is_servable_by_transformers_as_it_is(trained, tmp_path):
    workdir, tokenizer = trained
    out = str(tmp_path / "served")
    export_main(["--workdir", str(workdir), "--out", out])
    eos, extra = tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["eos_token_id"] == eos and config["pad_token_id"] == tokenizer.pad_token_id
    generation = json.load(open(os.path.join(out, "generation_config.json")))
    assert generation["eos_token_id"] == [eos, extra]  # the tokenizer's EOS, then the stop token
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o777 & ~umask  # not mkdtemp's 0700

    # transformers' generate, with nothing but the directory, stops at EOS. The weights are edited
    # so that EOS is the first greedy token: residual dimension 0 is a constant 50 (embeddings), no
    # layer writes to it, and only EOS reads it in the LM head.
    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 50.0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[0, :] = 0.0
            layer.mlp.down_proj.weight[0, :] = 0.0
        model.model.norm.weight[0] = 1.0
        model.lm_head.weight[:, 0] = 0.0
        model.lm_head.weight[eos, 0] = 100.0
    served = transformers.AutoTokenizer.from_pretrained(out)
    text = served.apply_chat_template(
        [{"role": "user", "content": "Count to three."}], add_generation_prompt=True, tokenize=False
    )
    ids = torch.tensor([served(text, add_special_tokens=False)["input_ids"]])
    new = model.generate(ids, max_new_tokens=20, do_sample=False)[0, ids.shape[1] :].tolist()
    assert new == [eos], new  # stopped on EOS, not at max_new_tokens


def test_the_export_takes_dtype_names(trained, tmp_path, capsys):
    from safetensors.numpy import load_file

    workdir, _ = trained
    out = str(tmp_path / "half")
    export_main(["--workdir", str(workdir), "--out", out, "--dtype", "fp16"])
    weights = load_file(os.path.join(out, "model.safetensors"))
    assert {w.dtype for w in weights.values()} == {np.dtype(np.float16)}
    with pytest.raises(SystemExit) as e:
        export_main(["--workdir", str(workdir), "--dtype", "fp12"])
    assert e.value.code == 2 and "--dtype: dtype 'fp12' is not one of" in capsys.readouterr().err


def test_the_export_restores_on_a_mesh_it_is_given(trained, tmp_path, capsys):
    """--mesh=fsdp=4,tensor=2 restores the checkpoint split over 8 devices and writes the same
    weights as the default mesh; a mesh that does not exist is a usage error naming it."""
    from safetensors.numpy import load_file

    workdir, _ = trained
    plain, split = str(tmp_path / "plain"), str(tmp_path / "split")
    export_main(["--workdir", str(workdir), "--out", plain])
    export_main(["--workdir", str(workdir), "--out", split, "--mesh", "fsdp=4,tensor=2"])
    want, got = (load_file(os.path.join(d, "model.safetensors")) for d in (plain, split))
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    for bad, message in (
        ("fsdp=3", "needs 3 devices but 8 are available"),
        ("pipeline=2", "axes ['pipeline'] do not exist"),
        ("fsdp=four", "expected AXIS=SIZE pairs, got 'fsdp=four'"),
    ):
        with pytest.raises(SystemExit) as e:
            export_main(["--workdir", str(workdir), "--mesh", bad])
        assert e.value.code == 2 and message in capsys.readouterr().err, bad


def test_stop_tokens_end_responses(tmp_path):
    tokenizer = load_tokenizer(testing.make_tiny_tokenizer(str(tmp_path / "tok")))
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    assert sampler_lib.stops(tokenizer, "<|endoftext|>,<|im_end|>") == (eos, pad)
    with pytest.raises(ValueError, match=r"'hello world' is not one token of the tokenizer"):
        sampler_lib.stop_token_ids(tokenizer, "hello world")

    # Sampling with a free run's most frequent token as a stop string: every response equals
    # the free run's, cut just after that token's first occurrence (same key, same draws).
    config = base_config()
    cfg = testing.tiny_config("qwen3", vocab_size=len(tokenizer))
    model = Model.random(cfg, seed=2)
    prompts = [tokenizer("a b c")["input_ids"], tokenizer("d e")["input_ids"]]
    config.rollout.n, config.rollout.max_new_tokens = 8, 12
    sampler, free_sp = sampler_lib.from_config(cfg, config.rollout, None, tokenizer)
    free = sampler(model.params, prompts, jax.random.key(3), free_sp)
    drawn = free.tokens[free.mask == 1]
    counts = np.bincount(drawn[(drawn != eos) & (drawn != pad)])
    stop = int(counts.argmax())  # the most frequent sampled token but EOS
    config.rollout.stop_tokens = tokenizer.convert_ids_to_tokens(stop)
    _, sp = sampler_lib.from_config(cfg, config.rollout, None, tokenizer)
    assert sp.stop_tokens == (eos, stop)
    got = sampler(model.params, prompts, jax.random.key(3), sp)
    cut = 0
    for row in range(len(got.tokens)):
        n = int(free.mask[row].sum())
        ends = [i for i, t in enumerate(free.tokens[row, :n]) if t in (eos, stop)]
        length = ends[0] + 1 if ends else n
        cut += length < n
        assert int(got.mask[row].sum()) == length
        np.testing.assert_array_equal(got.tokens[row, :length], free.tokens[row, :length])
    assert cut >= 1  # some response did stop early on it

    # Evaluation samples with the run's stop tokens.
    config.task.system_prompt = "x"
    assert sampled.periodic_settings(config).stop_tokens == config.rollout.stop_tokens
