"""LoRA (Hu et al., 2021): low-rank adapters on the decoder's projections, trained while the base
weights stay frozen.

An adapted projection computes y = x W + s · (x A) B, with A [in, r], B [r, out] and s = alpha / r
(PEFT's scaling; A starts as PEFT's, uniform in ±1/sqrt(in), B at zero, so a fresh adapter changes
nothing). The adapters live in the policy's parameter tree beside the kernel they adapt,
`layers/attn/q_proj/{kernel, lora_a, lora_b}` (with the layer axis in front, like every layer
parameter), and `decoder.Linear` applies them wherever they are present. The same tree without them
(`base`) is therefore the base model: the reference policy of FlowRL / GRPO costs no second copy of
the weights, and the sampler runs the adapted model as it is, without merging.

What is trained (`split`): the adapters and the heads beside the policy; the rest of the policy is
frozen, gets no gradient and no optimiser state.
"""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from ml_collections import ConfigDict

from flowrl_jax import rules as R
from flowrl_jax.models.families import DecoderConfig

ADAPTERS = ("lora_a", "lora_b")
# The kernels an adapter may sit on: the layers' projections. (The LM head's kernel is read
# outside `Linear` by the chunked log-probs, and an embedding is a lookup, not a matmul.)
ADAPTABLE = re.compile(r"^layers/(attn|mlp)/\w+_proj/kernel$")


def default_config() -> ConfigDict:
    """config.lora: off at rank 0."""
    return ConfigDict(
        {
            "rank": 0,  # r; 0 = full fine-tuning
            "alpha": 16.0,  # the adapters' output is scaled by alpha / rank (PEFT's lora_alpha)
            "dropout": 0.0,  # on each adapter's input, in the update only (PEFT's lora_dropout)
            # The SFT warm-up (config.sft) trains adapters too, and RL goes on from them (True);
            # or it fine-tunes the whole model, and RL's fresh adapters sit on the warm-up model
            # (False: a base that knows nothing, like the default job's random tiny model, learns
            # little through adapters alone).
            "sft": True,
            # Regexes (re.search) over the policy's '/'-joined parameter paths, as the partition
            # rules: every projection kernel a pattern matches gets an adapter; a pattern that
            # matches nothing, or matches a parameter that is not a projection kernel, is an error.
            "targets": [r"^layers/attn/(q|k|v|o)_proj/kernel$", r"^layers/mlp/\w+_proj/kernel$"],
        }
    )


RULES = {"rank": R.COUNT, "alpha": R.POSITIVE, "dropout": R.Range(0.0, 1.0, high_open=True)}


def enabled(cfg: ConfigDict | None) -> bool:
    return cfg is not None and cfg.rank > 0


def in_sft(cfg: ConfigDict | None) -> bool:
    """Whether the SFT warm-up trains adapters (else the whole model)."""
    return enabled(cfg) and cfg.get("sft", True)


def scale(cfg: ConfigDict) -> float:
    """s = alpha / r: `DecoderConfig.lora_scale` when LoRA is on, else 0."""
    return cfg.alpha / cfg.rank if enabled(cfg) else 0.0


def model_config(model_cfg: DecoderConfig, cfg: ConfigDict) -> DecoderConfig:
    """`model_cfg` with config.lora's scale and dropout (both 0 when LoRA is off)."""
    dropout = cfg.dropout if enabled(cfg) else 0.0
    return model_cfg.replace(lora_scale=scale(cfg), lora_dropout=dropout)


def flat(tree) -> dict[str, object]:
    """{'a/b/c': leaf} of a nested dict (an empty dict: {})."""
    return traverse_util.flatten_dict(tree, sep="/")


def targets(cfg: ConfigDict, policy) -> list[str]:
    """The kernel paths `cfg.targets` selects in `policy` (arrays or ShapeDtypeStructs, no
    adapters), in the tree's order. Errors name the pattern or parameter at fault."""
    if not isinstance(cfg.targets, (list, tuple)) or not cfg.targets:
        raise ValueError(f"lora.targets={cfg.targets!r} must be a non-empty list of regexes")
    paths = flat(policy)
    chosen = []
    for pattern in cfg.targets:
        try:
            hits = [p for p in paths if re.search(pattern, p)]
        except re.error as e:
            raise ValueError(f"lora.targets: {pattern!r} is not a regex: {e}") from None
        if not hits:
            raise ValueError(
                f"lora.targets: {pattern!r} matches no parameter of the policy; its "
                f"projection kernels are: {', '.join(p for p in paths if ADAPTABLE.search(p))}"
            )
        wrong = [p for p in hits if not ADAPTABLE.search(p)]
        if wrong:
            raise ValueError(
                f"lora.targets: {pattern!r} matches {', '.join(wrong)}, which the adapters "
                "cannot sit on: only the layers' projection kernels (layers/attn/*_proj/kernel, "
                "layers/mlp/*_proj/kernel) run through the adapted matmul, in training and in "
                "the sampler alike"
            )
        chosen += [p for p in hits if p not in chosen]
    for path in chosen:
        shape = paths[path].shape  # [L, in, out]
        if cfg.rank > min(shape[-2:]):
            raise ValueError(
                f"lora.rank={cfg.rank} exceeds {path}'s width {min(shape[-2:])} "
                f"(kernel {tuple(shape)}): a rank-r adapter needs r <= min(in, out)"
            )
    return [p for p in paths if p in chosen]


def adapter_shapes(cfg: ConfigDict, policy) -> dict[str, jax.ShapeDtypeStruct]:
    """'<kernel's module>/lora_a' and '/lora_b' -> float32 shapes [L, in, r] and [L, r, out]."""
    out = {}
    for path in targets(cfg, policy):
        *lead, d_in, d_out = flat(policy)[path].shape
        module = path.rsplit("/", 1)[0]
        out[f"{module}/lora_a"] = jax.ShapeDtypeStruct((*lead, d_in, cfg.rank), jnp.float32)
        out[f"{module}/lora_b"] = jax.ShapeDtypeStruct((*lead, cfg.rank, d_out), jnp.float32)
    return out


def init(cfg: ConfigDict, policy, rng) -> dict:
    """Fresh adapters for `policy`'s targets: {path: array}, A uniform in ±1/sqrt(in) (PEFT's
    kaiming_uniform with a = sqrt(5)), B zero. Trace it under jit to place them."""
    out = {}
    for i, (path, shape) in enumerate(adapter_shapes(cfg, policy).items()):
        if path.endswith("lora_b"):
            out[path] = jnp.zeros(shape.shape, shape.dtype)
        else:
            bound = 1.0 / math.sqrt(shape.shape[-2])
            key = jax.random.fold_in(rng, i)
            out[path] = jax.random.uniform(key, shape.shape, shape.dtype, -bound, bound)
    return out


def with_adapters(policy, adapters: dict) -> dict:
    """The policy tree with `adapters` ({path: array}, as `init` gives) beside their kernels."""
    return traverse_util.unflatten_dict(flat(policy) | adapters, sep="/")


def is_adapter(path: str) -> bool:
    return path.rsplit("/", 1)[-1] in ADAPTERS


def adapted(policy) -> bool:
    return any(is_adapter(p) for p in flat(policy))


def base(policy) -> dict:
    """The policy without its adapters: the base model (no copy: the same arrays)."""
    return traverse_util.unflatten_dict(
        {p: x for p, x in flat(policy).items() if not is_adapter(p)}, sep="/"
    )


def adapters(policy) -> dict:
    """The policy's adapters alone, nested as in the policy (no copy)."""
    leaves = {p: x for p, x in flat(policy).items() if is_adapter(p)}
    return traverse_util.unflatten_dict(leaves, sep="/")


def split(params: dict) -> tuple[dict, dict | None]:
    """A train state's params {'policy', heads...} -> (trainable, frozen): with adapters in the
    policy, trainable = the adapters and the heads, frozen = the base policy; without, (params,
    None)."""
    if not adapted(params["policy"]):
        return params, None
    trainable = dict(params, policy=adapters(params["policy"]))
    return trainable, {"policy": base(params["policy"])}


def join(trainable: dict, frozen: dict | None) -> dict:
    """The inverse of `split`."""
    if frozen is None:
        return trainable
    policy = flat(frozen["policy"]) | flat(trainable["policy"])
    return dict(trainable, policy=traverse_util.unflatten_dict(policy, sep="/"))


def merged(policy, lora_scale: float) -> dict:
    """The policy with each adapter folded into its kernel (W + s · A B, in the kernel's dtype,
    computed in float32) and the adapters dropped: the plain model of the same function."""
    leaves = flat(policy)
    out = {p: x for p, x in leaves.items() if not is_adapter(p)}
    for path in leaves:
        if path.endswith("/lora_a"):
            module = path[: -len("/lora_a")]
            a, b, w = leaves[path], leaves[f"{module}/lora_b"], leaves[f"{module}/kernel"]
            delta = jnp.matmul(a.astype(jnp.float32), b.astype(jnp.float32))
            out[f"{module}/kernel"] = (w.astype(jnp.float32) + lora_scale * delta).astype(w.dtype)
    return traverse_util.unflatten_dict(out, sep="/")


def peft_files(cfg: DecoderConfig, policy, lora_cfg: ConfigDict, base_model: str = "") -> tuple:
    """The adapters in PEFT's format -> (tensors {name: numpy array}, adapter_config dict): what
    `adapter_model.safetensors` and `adapter_config.json` hold, loadable with
    `peft.PeftModel.from_pretrained` on the base checkpoint. PEFT's lora_A.weight is [r, in] and
    lora_B.weight [out, r] per layer (torch's Linear layout): ours transposed."""
    from flowrl_jax.models.hf_io import host_array, key_map

    leaves = flat(policy)
    tensors, modules = {}, []
    for entry in key_map(cfg):
        module = "/".join(entry.ours[:-1])
        if entry.ours[-1] != "kernel" or f"{module}/lora_a" not in leaves:
            continue
        modules.append(entry.ours[-2])
        hf_module = "base_model.model." + entry.hf.removesuffix(".weight")
        for ours, theirs in (("lora_a", "lora_A"), ("lora_b", "lora_B")):
            stack = leaves[f"{module}/{ours}"]
            for i in range(cfg.num_layers):
                layer = host_array(stack, i).astype(np.float32)
                tensors[f"{hf_module.format(i=i)}.{theirs}.weight"] = np.ascontiguousarray(layer.T)
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": lora_cfg.rank,
        "lora_alpha": lora_cfg.alpha,
        "lora_dropout": lora_cfg.get("dropout", 0.0),
        "target_modules": sorted(set(modules)),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "base_model_name_or_path": base_model,
    }
    return tensors, config


def adapt(lora_cfg: ConfigDict, model, seed: int = 0):
    """`model` (a models.Model, its params placed on its mesh) with fresh adapters on
    `lora_cfg`'s targets, placed by the family's partition rules, and its config's lora_scale
    set. The base arrays are the model's own (no copy)."""
    from flowrl_jax.models import partition
    from flowrl_jax.models.model import Model

    shapes = adapter_shapes(lora_cfg, model.params)
    shardings = None
    if model.mesh is not None:
        tree = traverse_util.unflatten_dict(shapes, sep="/")
        rules = partition.rules_for(model.cfg.family)
        shardings = flat(partition.shardings(rules, tree, model.mesh))
    make = jax.jit(lambda rng: init(lora_cfg, model.params, rng), out_shardings=shardings)
    adapters = make(jax.random.key(seed))
    cfg = model_config(model.cfg, lora_cfg)
    return Model(cfg, with_adapters(model.params, adapters), model.mesh, model.hf_config)
