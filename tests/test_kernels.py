"""Attention per backend (`model.attention`, flowrl_jax/models/kernels.py): the splash kernel in
Pallas's interpret mode against a numpy attention written out by hand and against the XLA path,
alone and inside the decoder; each kernel exported for its platform over a mesh; what 'auto'
picks; the errors. Tests marked gpu / tpu run the compiled kernels where that backend is JAX's."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export as jax_export
from jax.sharding import AbstractMesh, AxisType
from jax.sharding import PartitionSpec as P

from flowrl_jax import config as config_lib
from flowrl_jax import lower
from flowrl_jax.models import kernels, lora, tiny
from flowrl_jax.models.decoder import Decoder, init_params

B, T, H, K, DH = 2, 100, 4, 2, 16  # T: not a multiple of the kernels' blocks


def rows(seed=0):
    """q, k, v in float32, and two rows' masks: row 0 left-padded (13 pads), row 1 packed with
    three sequences (40 + 37 + 13 tokens) and 10 pads at its end."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, T, H, DH)).astype(np.float32)
    k = rng.standard_normal((B, T, K, DH)).astype(np.float32)
    v = rng.standard_normal((B, T, K, DH)).astype(np.float32)
    real = np.ones((B, T), bool)
    real[0, :13] = False
    real[1, 90:] = False
    segments = np.zeros((B, T), np.int32)
    segments[1, 40:], segments[1, 77:] = 1, 2
    return q, k, v, real, segments


def by_hand(q, k, v, real, segments):
    """Causal attention within each sequence, over real keys, GQA (query head h reads KV head
    h // R), in float64 numpy; rows of padding queries are left zero."""
    R = H // K
    out = np.zeros(q.shape)
    for b in range(B):
        for t in range(T):
            if not real[b, t]:
                continue
            seen = (np.arange(T) <= t) & real[b] & (segments[b] == segments[b, t])
            for h in range(H):
                s = k[b, seen, h // R].astype(np.float64) @ q[b, t, h] / np.sqrt(DH)
                p = np.exp(s - s.max())
                out[b, t, h] = (p / p.sum()) @ v[b, seen, h // R]
    return out


def xla_attention(q, k, v, real, segments):
    """The decoder's XLA path on the same inputs: attention.attend over the [B, T, T] mask."""
    from flowrl_jax.models import attention

    mask = jnp.tril(jnp.ones((T, T), bool))[None] & real[:, None, :]
    mask &= segments[:, :, None] == segments[:, None, :]
    qx = q.reshape(B, T, K, H // K, DH).transpose(0, 2, 1, 3, 4).reshape(B, K, -1, DH)
    kx, vx = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    out = attention.attend(qx, (kx,), (vx,), mask, jnp.float32, False)
    return out.reshape(B, K, T, H // K, DH).transpose(0, 2, 1, 3, 4).reshape(B, T, H, DH)


def splash(q, k, v, real, segments):
    return kernels.attend("splash", q, k, v, kernels.sequence_ids(real, segments))


def test_splash_equals_attention_by_hand_and_its_gradients_the_xla_paths():
    q, k, v, real, segments = rows()
    got = np.asarray(jax.jit(splash)(q, k, v, real, segments))
    want = by_hand(q, k, v, real, segments)
    np.testing.assert_allclose(got[real], want[real], atol=1e-5, rtol=1e-5)

    weights = (
        np.random.default_rng(1).standard_normal(q.shape).astype(np.float32) * real[..., None, None]
    )

    def loss(f):
        return jax.jit(
            jax.grad(lambda q, k, v: (f(q, k, v, real, segments) * weights).sum(), (0, 1, 2))
        )

    for ours, theirs in zip(loss(splash)(q, k, v), loss(xla_attention)(q, k, v)):
        np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=1e-5)


def packed_batch(cfg):
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, cfg.vocab_size, (2, 40))
    real = np.ones((2, 40), bool)
    real[0, :7], real[1, 35:] = False, False
    segments = np.zeros((2, 40), np.int32)
    segments[1, 15:], segments[1, 28:] = 1, 2
    positions = np.zeros((2, 40), np.int32)
    for b in range(2):
        for s in np.unique(segments[b]):
            at = np.flatnonzero((segments[b] == s) & real[b])
            positions[b, at] = np.arange(len(at))
    return tokens, positions, real, segments


@pytest.mark.parametrize("adapters", [False, True])
def test_the_decoder_with_splash_equals_the_xla_path_logits_and_gradients(adapters):
    """A tiny Qwen2 (q/k/v biases, GQA) over a left-padded row and a packed one; with LoRA
    adapters (non-zero) on every projection too: they compose with the kernel."""
    cfg = tiny.tiny_config("qwen2")
    params = init_params(cfg, jax.random.key(0))
    if adapters:
        lcfg = lora.default_config()
        lcfg.rank = 4
        fresh = lora.init(lcfg, params, jax.random.key(1))
        fresh = {k: v + 0.05 if k.endswith("lora_b") else v for k, v in fresh.items()}
        params, cfg = lora.with_adapters(params, fresh), lora.model_config(cfg, lcfg)
    tokens, positions, real, segments = packed_batch(cfg)

    def run(kind):
        model = Decoder(cfg.replace(attention=kind))

        def loss(p):
            logits = model.apply({"params": p}, tokens, positions, real, segments=segments).logits
            logp = jax.nn.log_softmax(logits)[:, :-1]
            picked = jnp.take_along_axis(logp, tokens[:, 1:, None], -1)[..., 0]
            scored = real[:, :-1] & real[:, 1:]  # a padding query's output is never used
            return (picked * scored).sum() / scored.sum(), logits

        return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)

    (loss_xla, logits_xla), grads_xla = run("xla")
    (loss_splash, logits_splash), grads_splash = run("splash")
    np.testing.assert_allclose(logits_splash[real], logits_xla[real], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(loss_splash, loss_xla, rtol=1e-6)
    for ours, theirs in zip(jax.tree.leaves(grads_splash), jax.tree.leaves(grads_xla)):
        np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "kind, platform, calls",
    [
        ("splash", "tpu", {"tpu_custom_call"}),
        ("cudnn", "cuda", {"__cudnn$fmhaScaleBiasSoftmax", "__cudnn$fmhaScaleBiasSoftmaxBackward"}),
    ],
)
def test_each_kernel_exports_for_its_platform_over_a_mesh(kind, platform, calls):
    """Forward and gradients in bf16 over an abstract mesh of 8 devices (rows over data / fsdp,
    KV heads over tensor): the kernel's custom calls are in the module, inside each device's
    own part (no custom call is left to the partitioner)."""
    mesh = AbstractMesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)
    rows_spec = jax.sharding.NamedSharding(mesh, P(("data", "fsdp")))
    shape = lambda *s: jax.ShapeDtypeStruct(s, jnp.bfloat16, sharding=rows_spec)
    ids = jax.ShapeDtypeStruct((4, 256), jnp.int32, sharding=rows_spec)

    def loss(q, k, v, ids):
        return kernels.attend(kind, q, k, v, ids).astype(jnp.float32).sum()

    program = jax.jit(jax.value_and_grad(loss, (0, 1, 2)))
    with jax.sharding.use_abstract_mesh(mesh), kernels.cudnn_lowerable():
        exported = jax_export.export(program, platforms=[platform], disabled_checks=lower.CHECKS)(
            shape(4, 256, 8, 64), shape(4, 256, 2, 64), shape(4, 256, 2, 64), ids
        )
    text = exported.mlir_module()
    for call in calls:
        assert f"custom_call @{call}" in text
    assert "CustomSPMDPartitioning" not in text
    assert exported.nr_devices == 8


def test_auto_picks_by_backend_and_dtype():
    assert kernels.resolve("auto", "bfloat16", "tpu") == "splash"
    assert kernels.resolve("auto", "float32", "tpu") == "splash"
    assert kernels.resolve("auto", "bfloat16", "gpu") == "cudnn"
    assert kernels.resolve("auto", "float32", "gpu") == "xla"  # cuDNN's flash kernel: no fp32
    assert kernels.resolve("auto", "bfloat16", "cpu") == "xla"
    assert kernels.resolve("splash", "float32", "cpu") == "splash"
    assert kernels.resolve("auto", "float32") == "xla"  # this suite's backend, the CPU
    assert kernels.resolve_decode("auto", "gpu") == "pallas_gpu"
    assert kernels.resolve_decode("auto", "tpu") == "pallas_tpu"
    assert kernels.resolve_decode("auto") == "xla"
    cfg = tiny.tiny_config("qwen2")
    assert not kernels.keys_major(cfg)  # the CPU keeps its transposed key cache
    assert kernels.keys_major(cfg.replace(decode_attention="pallas_tpu"))


def test_a_kernel_the_setting_or_backend_cannot_run_is_refused_before_compiling():
    cfg = tiny.tiny_config("qwen2")
    with pytest.raises(ValueError, match="attention='flash' must be one of"):
        cfg.replace(attention="flash")
    with pytest.raises(ValueError, match="attention='cudnn' computes in bfloat16 or float16"):
        cfg.replace(attention="cudnn")
    with pytest.raises(ValueError, match="'cudnn' needs an NVIDIA GPU; this backend is cpu"):
        kernels.check("cudnn")
    with pytest.raises(ValueError, match="'splash' is a TPU kernel; this backend is gpu"):
        kernels.check("splash", "gpu")
    with pytest.raises(ValueError, match="'pallas_tpu' is a TPU kernel; this backend is gpu"):
        kernels.check("pallas_tpu", "gpu")
    with pytest.raises(ValueError, match="'pallas_gpu' is a GPU kernel; this backend is tpu"):
        kernels.check("pallas_gpu", "tpu")
    with pytest.raises(ValueError, match="decode_attention='pallas' must be one of"):
        cfg.replace(decode_attention="pallas")
    config = config_lib.get_config()
    config.model.attention = "flash"
    from flowrl_jax.trainer import validate

    with pytest.raises(ValueError, match="model.attention"):
        validate.check(config)


def bf16_against_xla(kind):
    q, k, v, real, segments = rows()
    q, k, v = (jnp.asarray(x, jnp.bfloat16) for x in (q, k, v))
    got = jax.jit(lambda *a: kernels.attend(kind, *a))(
        q, k, v, kernels.sequence_ids(real, segments)
    )
    want = xla_attention(
        q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32), real, segments
    )
    np.testing.assert_allclose(np.asarray(got, np.float32)[real], np.asarray(want)[real], atol=3e-2)


@pytest.mark.gpu
def test_cudnn_on_a_gpu_equals_the_xla_path_in_bf16():
    bf16_against_xla("cudnn")


@pytest.mark.tpu
def test_splash_on_a_tpu_equals_the_xla_path_in_bf16():
    bf16_against_xla("splash")


@pytest.mark.parametrize("kind", ["pallas_gpu", "pallas_tpu"])
def test_each_decode_kernel_reads_each_rows_visible_run_as_attention_by_hand(kind):
    """Pallas's GPU decode kernel and ours for the TPU (interpret mode): rows left-padded then
    filled to their own lengths (one across a block boundary, one to the last slot), one row
    that sees nothing (a free slot: output unused, but finite)."""
    rng = np.random.default_rng(0)
    rows, slots = 4, 256
    q = rng.standard_normal((rows, K, H // K, DH)).astype(np.float32)
    k = rng.standard_normal((rows, K, slots, DH)).astype(np.float32)
    v = rng.standard_normal((rows, K, slots, DH)).astype(np.float32)
    runs = [(3, 150), (0, 256), (130, 131), (0, 0)]  # [first, last + 1) visible per row
    mask = np.zeros((rows, slots), bool)
    for row, (first, end) in enumerate(runs):
        mask[row, first:end] = True
    got = np.asarray(jax.jit(functools.partial(kernels.decode, kind))(q, k, v, mask))
    assert np.isfinite(got).all()
    for row, (first, end) in enumerate(runs[:3]):
        for head in range(H):
            kv = head // (H // K)
            s = k[row, kv, first:end] @ q[row, kv, head % (H // K)] / np.sqrt(DH)
            p = np.exp(s - s.max())
            want = (p / p.sum()) @ v[row, kv, first:end]
            np.testing.assert_allclose(got[row, kv, head % (H // K)], want, atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
def test_the_gpu_decode_kernel_on_a_gpu_equals_attention_by_hand():
    test_each_decode_kernel_reads_each_rows_visible_run_as_attention_by_hand("pallas_gpu")


@pytest.mark.tpu
def test_the_tpu_decode_kernel_on_a_tpu_equals_attention_by_hand():
    test_each_decode_kernel_reads_each_rows_visible_run_as_attention_by_hand("pallas_tpu")
