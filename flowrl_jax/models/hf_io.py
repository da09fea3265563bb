"""Hugging Face checkpoint I/O: an explicit key map, a sharded loader and an exporter.

Loading places every tensor on its NamedSharding as it is read: `jax.make_array_from_callback` asks,
per addressable device, for the slice that device holds, and the callback reads just that slice from a
memmap of the safetensors file. A model larger than one device (or than host memory) never sits whole
anywhere. Layer tensors `model.layers.{i}.*` are stacked into our `[L, ...]` scan layout, and torch
Linear weights `[out, in]` are transposed into kernels `[in, out]`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, SingleDeviceSharding

from flowrl_jax.models import lora, partition, safetensors_file
from flowrl_jax.models.decoder import param_shapes
from flowrl_jax.models.families import DecoderConfig, config_from_hf, config_to_hf, read_hf_config
from flowrl_jax.models.model import Model

# Tensors a checkpoint may hold that we do not need: rotary buffers in old Llama exports.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclasses.dataclass(frozen=True)
class Entry:
    ours: tuple[str, ...]  # our parameter path
    hf: str  # HF tensor name; '{i}' is the layer index for stacked entries
    transpose: bool  # torch Linear [out, in] <-> our kernel [in, out]
    stacked: bool  # one HF tensor per layer, stacked on our leading axis


def key_map(cfg: DecoderConfig) -> list[Entry]:
    """Every tensor of cfg's model, ours <-> HF. Its length is the exact key count of a checkpoint."""
    layer = "model.layers.{i}."
    out = [Entry(("embed", "embedding"), "model.embed_tokens.weight", False, False)]

    def add(ours, hf, transpose=False):
        out.append(Entry(("layers",) + ours, layer + hf, transpose, True))

    add(("input_norm", "scale"), "input_layernorm.weight")
    for name in ("q", "k", "v", "o"):
        add(("attn", f"{name}_proj", "kernel"), f"self_attn.{name}_proj.weight", transpose=True)
        if (cfg.qkv_bias and name != "o") or (cfg.o_bias and name == "o"):
            add(("attn", f"{name}_proj", "bias"), f"self_attn.{name}_proj.bias")
    if cfg.qk_norm:
        add(("attn", "q_norm", "scale"), "self_attn.q_norm.weight")
        add(("attn", "k_norm", "scale"), "self_attn.k_norm.weight")
    add(("post_attn_norm", "scale"), "post_attention_layernorm.weight")
    for name in ("gate", "up", "down"):
        add(("mlp", f"{name}_proj", "kernel"), f"mlp.{name}_proj.weight", transpose=True)
    out.append(Entry(("final_norm", "scale"), "model.norm.weight", False, False))
    if not cfg.tie_word_embeddings:
        out.append(Entry(("lm_head", "kernel"), "lm_head.weight", True, False))
    return out


def hf_names(entry: Entry, num_layers: int) -> list[str]:
    return [entry.hf.format(i=i) for i in range(num_layers)] if entry.stacked else [entry.hf]


def _tree_get(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def _tree_set(tree: dict, path, value):
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = value


def _open_shards(path: str) -> dict[str, safetensors_file.SafetensorsFile]:
    """HF tensor name -> the open file holding it (single file or an index of shards)."""
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        files = {}
        for name in sorted(set(weight_map.values())):
            file = os.path.join(path, name)
            if not os.path.isfile(file):
                raise FileNotFoundError(
                    f"shard {name} listed in {index} is missing from the checkpoint directory"
                )
            files[name] = safetensors_file.SafetensorsFile(file)
        for key, name in weight_map.items():
            if key not in files[name].header:
                raise ValueError(f"{index} maps {key!r} to {name}, which does not contain it")
        return {key: files[name] for key, name in weight_map.items()}
    single = os.path.join(path, "model.safetensors")
    if not os.path.isfile(single):
        raise FileNotFoundError(
            f"no model.safetensors or model.safetensors.index.json in {path} "
            "(only safetensors checkpoints are supported)"
        )
    f = safetensors_file.SafetensorsFile(single)
    return {key: f for key in f.keys()}


def _check_keys(entries: list[Entry], cfg: DecoderConfig, tensors: dict, shapes) -> None:
    """Key count and every shape, before anything is read; errors name the key."""
    expected = {}
    for e in entries:
        shape = _tree_get(shapes, e.ours).shape
        shape = shape[1:] if e.stacked else shape
        shape = tuple(reversed(shape)) if e.transpose else tuple(shape)
        for name in hf_names(e, cfg.num_layers):
            expected[name] = shape
    present = {k for k in tensors if not k.endswith(_IGNORED_SUFFIXES)}
    if cfg.tie_word_embeddings:
        present.discard("lm_head.weight")  # some exporters write the tied copy; it is the embedding
    missing = sorted(set(expected) - present)
    extra = sorted(present - set(expected))
    if missing or extra:
        raise ValueError(
            f"checkpoint does not match the {cfg.family} key map ({len(expected)} tensors expected, "
            f"{len(present)} found): missing {missing[:8]}{' ...' if len(missing) > 8 else ''}, "
            f"unexpected {extra[:8]}{' ...' if len(extra) > 8 else ''}"
        )
    for name, shape in expected.items():
        found = tensors[name].shape(name)
        if found != shape:
            raise ValueError(
                f"checkpoint tensor {name!r} has shape {found}, expected {shape} from config.json"
            )


def _reader(entry: Entry, cfg: DecoderConfig, tensors: dict, dtype: np.dtype):
    """Callback for make_array_from_callback: global index (tuple of slices) -> that host slice."""

    def read_one(name, index):
        src = tensors[name].get(name)
        if entry.transpose:  # read rows of the [out, in] weight, then transpose
            return np.asarray(src[index[1], index[0]]).T
        return np.asarray(src[index])

    def callback(index):
        if entry.stacked:
            layers = range(cfg.num_layers)[index[0]]
            block = np.stack([read_one(entry.hf.format(i=i), index[1:]) for i in layers])
        else:
            block = read_one(entry.hf, index)
        return block.astype(dtype)

    return callback


def load_hf(
    path: str,
    *,
    mesh: Mesh | None = None,
    dtype: str | None = None,
    param_dtype: str | None = None,
    rules=None,
    **overrides,
) -> Model:
    """Load a local HF checkpoint directory into (sharded) parameters.

    dtype: compute dtype (default: float32); param_dtype: storage dtype (default: dtype).
    mesh: place parameters by the family's partition rules (or `rules`); None = first device.
    overrides: DecoderConfig fields, e.g. remat='full'.
    """
    path = os.fspath(path)
    hf = read_hf_config(path)
    dtype = dtype or "float32"
    cfg = config_from_hf(hf, dtype=dtype, param_dtype=param_dtype or dtype, **overrides)
    tensors = _open_shards(path)
    entries = key_map(cfg)
    shapes = param_shapes(cfg)
    _check_keys(entries, cfg, tensors, shapes)
    if mesh is not None:
        sharding_tree = partition.shardings(rules or partition.rules_for(cfg.family), shapes, mesh)
    else:
        one = SingleDeviceSharding(jax.devices()[0])
        sharding_tree = jax.tree.map(lambda _: one, shapes)
    np_dtype = np.dtype(jnp.dtype(cfg.param_dtype))
    params: dict = {}
    for e in entries:
        shape = _tree_get(shapes, e.ours).shape
        array = jax.make_array_from_callback(
            shape, _tree_get(sharding_tree, e.ours), _reader(e, cfg, tensors, np_dtype)
        )
        _tree_set(params, e.ours, array)
    return Model(cfg, params, mesh=mesh, hf_config=hf)


def host_array(array: jax.Array, i: int | None) -> np.ndarray:
    """One layer (or the whole tensor) of a possibly sharded, possibly multi-host array on host."""
    part = array if i is None else array[i]
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(part, tiled=True))
    return np.asarray(jax.device_get(part))


def _export_plan(cfg: DecoderConfig, params, dtype) -> Iterator[tuple[str, tuple, np.dtype, tuple]]:
    for e in key_map(cfg):
        leaf = _tree_get(params, e.ours)
        shape = leaf.shape[1:] if e.stacked else leaf.shape
        shape = tuple(reversed(shape)) if e.transpose else tuple(shape)
        for i, name in enumerate(hf_names(e, cfg.num_layers)):
            yield name, shape, dtype, (e, i if e.stacked else None)


DTYPES = {
    "float32": "float32", "fp32": "float32", "f32": "float32", "float": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "f16": "float16", "half": "float16",
}  # fmt: skip


def dtype_name(name: str) -> str:
    """'fp16' / 'bf16' / 'fp32' (and their long names) -> the numpy name; anything else is an
    error that lists the choices."""
    key = str(name).lower()
    if key not in DTYPES:
        raise ValueError(f"dtype {name!r} is not one of {', '.join(DTYPES)}")
    return DTYPES[key]


def generation_config(tokenizer, stop_token_ids=(), base: dict | None = None) -> dict:
    """generation_config.json: the tokenizer's bos / pad ids and every id that ends a response
    (the tokenizer's EOS, then `stop_token_ids`), over `base` (the source checkpoint's own file,
    whose sampling defaults stay). Without it `transformers`' generate never stops."""
    out = dict(base or {})
    ends = out.get("eos_token_id", [])
    ends = [ends] if isinstance(ends, int) else list(ends)
    for i in [tokenizer.eos_token_id, *stop_token_ids]:
        if i is not None and i not in ends:
            ends.append(int(i))
    if ends:
        out["eos_token_id"] = ends[0] if len(ends) == 1 else ends
    for key in ("bos_token_id", "pad_token_id"):
        value = getattr(tokenizer, key, None)
        if value is not None:
            out.setdefault(key, int(value))
    return out


def save_hf(
    model: Model,
    path: str,
    *,
    tokenizer=None,
    dtype: str | None = None,
    max_shard_bytes: int = 5 << 30,
    overwrite: bool = False,
    stop_token_ids=(),
    base_generation_config: dict | None = None,
) -> str:
    """Write `model` as an HF checkpoint directory that `transformers` loads and serves as it is.

    With a tokenizer, config.json holds its bos / eos / pad ids and generation_config.json every id
    that ends a response (`generation_config`). Atomic: files are written to a temporary sibling
    directory that is renamed into place at the end, so an interrupted export leaves no half-written
    checkpoint; the directory gets the umask's mode, as `mkdir` would. Multi-host: every process
    gathers, process 0 writes. Only the decoder is exported (never the log-Z or value heads).
    """
    path = os.fspath(path).rstrip("/")
    if lora.adapted(model.params):
        raise ValueError(
            "the model has LoRA adapters, which an HF checkpoint has no place for: save "
            "lora.merged(params, cfg.lora_scale) (python -m flowrl_jax.export does), or the "
            "adapters alone in PEFT's format (export --adapters)"
        )
    if os.path.exists(path) and os.listdir(path) and not overwrite:
        raise FileExistsError(f"{path} exists and is not empty; pass overwrite=True to replace it")
    cfg = model.cfg
    np_dtype = np.dtype(jnp.dtype(dtype_name(dtype or cfg.param_dtype)))
    plan = list(_export_plan(cfg, model.params, np_dtype))
    # Group tensors into shards of at most max_shard_bytes, in key-map order.
    shards, size = [[]], 0
    for item in plan:
        nbytes = int(np.prod(item[1], dtype=np.int64)) * np_dtype.itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += nbytes
    by_name = {name: ref for name, _, _, ref in plan}

    def fetch(name):
        entry, i = by_name[name]
        array = host_array(_tree_get(model.params, entry.ours), i)
        return array.T if entry.transpose else array

    writer = jax.process_index() == 0
    parent = os.path.dirname(os.path.abspath(path))
    tmp = (
        tempfile.mkdtemp(prefix=os.path.basename(path) + ".partial-", dir=parent)
        if writer
        else None
    )
    try:
        files = (
            ["model.safetensors"]
            if len(shards) == 1
            else [f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))]
        )
        for file, shard in zip(files, shards):
            if writer:
                safetensors_file.write(os.path.join(tmp, file), [s[:3] for s in shard], fetch)
            else:  # other hosts take part in the gathers
                for name, *_ in shard:
                    fetch(name)
        if not writer:
            return path
        if len(files) > 1:
            total = sum(int(np.prod(s[1], dtype=np.int64)) * np_dtype.itemsize for s in plan)
            index = {
                "metadata": {"total_size": total},
                "weight_map": {s[0]: f for f, shard in zip(files, shards) for s in shard},
            }
            with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
                json.dump(index, f, indent=2)
        hf = config_to_hf(cfg.replace(param_dtype=str(np_dtype)), base=model.hf_config)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
            generation = generation_config(tokenizer, stop_token_ids, base_generation_config)
            # config.json: the tokenizer's own ids (generation_config.json lists every stop).
            for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
                if hf.get(key) is None and getattr(tokenizer, key, None) is not None:
                    hf[key] = int(getattr(tokenizer, key))
            with open(os.path.join(tmp, "generation_config.json"), "w") as f:
                json.dump(generation, f, indent=2)
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(hf, f, indent=2)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would hide the export from its server
        if os.path.exists(path):  # swap: the old directory goes only once the new one is in place
            old = tempfile.mkdtemp(prefix=os.path.basename(path) + ".old-", dir=parent)
            os.replace(path, os.path.join(old, "previous"))
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        if tmp is not None and os.path.exists(tmp):
            shutil.rmtree(tmp)
    return path


def load_tokenizer(path: str):
    """Any local HF tokenizer directory (with its chat template) through AutoTokenizer."""
    from transformers import AutoTokenizer

    if not os.path.isdir(path):
        raise FileNotFoundError(f"tokenizer directory {path} does not exist")
    return AutoTokenizer.from_pretrained(path, local_files_only=True)
