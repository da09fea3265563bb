"""Partition rules: ordered (regex, PartitionSpec) tables, matched against '/'-joined parameter paths.

The first rule whose regex `re.search`es the path wins. A parameter no rule matches is an error (a
silent replication of a new 7B tensor is how a pod runs out of memory). Scalars and size-1 tensors are
never split. A dimension the assigned mesh axes do not divide is left unsplit and reported.

Layer parameters carry a leading layer axis [L, ...] (the decoder scans over layers); it is never split.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence

import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

log = logging.getLogger(__name__)

Rules = Sequence[tuple[str, P]]

# Shared by the three families: they use the same parameter names (see models/decoder.py); rules for
# parameters a family lacks (q/k norms, biases) simply never match.
_DECODER_RULES: Rules = (
    (r"^embed/embedding$", P("tensor", "fsdp")),  # [V, D]
    (r"^layers/attn/(q|k|v)_proj/kernel$", P(None, "fsdp", "tensor")),  # [L, D, H*Dh]
    (r"^layers/attn/(q|k|v)_proj/bias$", P(None, "tensor")),  # [L, H*Dh]
    (r"^layers/attn/o_proj/kernel$", P(None, "tensor", "fsdp")),  # [L, H*Dh, D]
    (r"^layers/attn/o_proj/bias$", P(None, None)),  # [L, D]
    (r"^layers/mlp/(gate|up)_proj/kernel$", P(None, "fsdp", "tensor")),  # [L, D, F]
    (r"^layers/mlp/down_proj/kernel$", P(None, "tensor", "fsdp")),  # [L, F, D]
    (r"(^|/)(input_norm|post_attn_norm|q_norm|k_norm|final_norm)/scale$", P()),  # small, replicated
    (r"^lm_head/kernel$", P("fsdp", "tensor")),  # [D, V]
)

FAMILY_RULES: dict[str, Rules] = {
    "qwen2": _DECODER_RULES,
    "qwen3": _DECODER_RULES,
    "llama": _DECODER_RULES,
}


# The heads trained beside the policy (algorithms/heads.py), matched against paths inside
# params['logz_head'] / params['value_head'] with the prefix kept ('logz_head/Dense_0/kernel').
# The log-Z head's kernels ([D, D] per block, then [D, 1]) split their input rows over every
# model-sharding device, like the policy's matrices are split over fsdp x tensor: the rows because
# the last kernel's single output column cannot be split, and one rule serves every depth.
HEAD_RULES: Rules = (
    (r"^logz_head/Dense_\d+/kernel$", P(("fsdp", "tensor"), None)),  # [D, D] and the last [D, 1]
    (r"^logz_head/(Dense|LayerNorm)_\d+/(bias|scale)$", P()),  # [D] or [1]: tiny, replicated
    (r"^value_head/Dense_0/(kernel|bias)$", P()),  # [D, 1] and [1]: D floats, replicated
)


def _tensor_only(spec: P) -> P:
    """spec with every mesh axis but "tensor" removed."""

    def keep(axes):
        names = axes if isinstance(axes, tuple) else (axes,)
        kept = tuple(a for a in names if a == "tensor")
        return kept[0] if len(kept) == 1 else None

    return P(*(None if axes is None else keep(axes) for axes in spec))


def decode_rules(family: str) -> Rules:
    """The layout sampling reads the weights in: the family's rules with the data-parallel axes
    dropped, so each weight is split over "tensor" only and whole on every other device. Decode
    reads every weight at every step; a weight split over fsdp would be gathered again each time
    (and the partitioner may keep several gathered copies live): one gathered copy in the
    compute dtype is what sampling pays instead."""
    return tuple((pattern, _tensor_only(spec)) for pattern, spec in rules_for(family))


def rules_for(family: str) -> Rules:
    if family not in FAMILY_RULES:
        raise KeyError(f"no partition rules for family {family!r}; known: {sorted(FAMILY_RULES)}")
    return FAMILY_RULES[family]


def path_str(path) -> str:
    """A jax key path -> 'a/b/c'."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _fit(spec: P, shape: tuple[int, ...], mesh: Mesh | None, name: str) -> P:
    """Drop mesh axes from dims they do not divide; pad/trim the spec to the rank."""
    if len(shape) == 0 or math.prod(shape) == 1:
        return P()
    if len(spec) > len(shape):
        raise ValueError(f"partition rule {spec} has more dims than parameter {name} {shape}")
    if mesh is None:
        return spec
    out = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
        size = math.prod(mesh.shape[a] for a in names)
        if names and dim % size:
            log.warning(
                "partition: %s dim %d (size %d) not divisible by mesh %s=%d; left unsplit",
                name,
                len(out),
                dim,
                names,
                size,
            )
            axes = None
        out.append(axes)
    return P(*out)


def _adapter_spec(rules: Rules, name: str) -> P | None:
    """A LoRA adapter's spec (models/lora.py), from its kernel's rule [L, in, out]: A [L, in, r]
    split as the kernel's input, B [L, r, out] as its output; the rank dim whole."""
    module, _, which = name.rpartition("/")
    if which not in ("lora_a", "lora_b"):
        return None
    kernel = f"{module}/kernel"
    spec = next((s for pattern, s in rules if re.search(pattern, kernel)), None)
    if spec is None:
        return None
    layer, d_in, d_out = (tuple(spec) + (None,) * 3)[:3]
    return P(layer, d_in, None) if which == "lora_a" else P(layer, None, d_out)


def match(rules: Rules, params, mesh: Mesh | None = None):
    """Pytree of PartitionSpecs for `params` (arrays or ShapeDtypeStructs)."""

    def one(path, leaf):
        name = path_str(path)
        adapter = _adapter_spec(rules, name)
        if adapter is not None:
            return _fit(adapter, tuple(leaf.shape), mesh, name)
        for pattern, spec in rules:
            if re.search(pattern, name):
                return _fit(spec, tuple(leaf.shape), mesh, name)
        raise ValueError(
            f"no partition rule matches parameter {name!r} {tuple(leaf.shape)}; "
            "add one to the family's table in flowrl_jax/models/partition.py"
        )

    return jax.tree_util.tree_map_with_path(one, params)


def shardings(rules: Rules, params, mesh: Mesh):
    """Pytree of NamedShardings for `params` on `mesh`."""
    return jax.tree.map(
        lambda s: NamedSharding(mesh, s),
        match(rules, params, mesh),
        is_leaf=lambda x: isinstance(x, P),
    )
