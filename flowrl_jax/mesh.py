"""The one mesh factory. Axis names are fixed across the code:

    data    pure data parallelism (parameters replicated along it)
    fsdp    data parallelism with parameters and optimiser state sharded along it
    tensor  tensor (model) parallelism inside a layer

Entry points build the mesh once, from `config.mesh`, and enter it with `jax.set_mesh(mesh)`, which
makes it the context mesh so that bare PartitionSpecs resolve against it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from flowrl_jax import rules as R

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the batch dimension is split over both data-parallel axes
DEFAULT_SHAPE = {"data": 1, "fsdp": -1, "tensor": 1}


def parse_shape(text: str) -> dict[str, int]:
    """A command line's mesh, 'fsdp=4,tensor=2' -> {'fsdp': 4, 'tensor': 2} (axes left out are
    1; one may be -1: the devices left). Unknown axes and non-integers are errors."""
    shape = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        axis, _, size = part.partition("=")
        try:
            shape[axis.strip()] = int(size)
        except ValueError:
            raise ValueError(f"mesh {text!r}: expected AXIS=SIZE pairs, got {part!r}") from None
    unknown = sorted(set(shape) - set(AXES))
    if unknown:
        raise ValueError(f"mesh {text!r}: axes {unknown} do not exist; the axes are {AXES}")
    return {a: shape.get(a, 1) for a in AXES}


def mesh_shape(shape: Mapping[str, int] | None, num_devices: int) -> tuple[int, ...]:
    """Resolve a {'data', 'fsdp', 'tensor'} -> size mapping (one size may be -1) for num_devices."""
    shape = dict(DEFAULT_SHAPE if shape is None else shape)
    unknown = sorted(set(shape) - set(AXES))
    if unknown:
        raise ValueError(f"mesh axes {unknown} do not exist; the axes are {AXES}")
    sizes = [int(shape.get(a, 1)) for a in AXES]
    free = [a for a, s in zip(AXES, sizes) if s == -1]
    if len(free) > 1:
        raise ValueError(f"mesh: only one axis may be -1, got {free}")
    for a, s in zip(AXES, sizes):
        if s == 0 or s < -1:
            raise ValueError(f"mesh.{a}={s} must be a positive size or -1")
    known = math.prod(s for s in sizes if s != -1)
    if free:
        if num_devices % known:
            raise ValueError(
                f"mesh {dict(zip(AXES, sizes))}: the fixed axes ({known} devices) do not divide "
                f"the {num_devices} available devices"
            )
        sizes[AXES.index(free[0])] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ValueError(
            f"mesh {dict(zip(AXES, sizes))} needs {math.prod(sizes)} devices but "
            f"{num_devices} are available"
        )
    return tuple(sizes)


def make_mesh(
    shape: Mapping[str, int] | None = None, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """A Mesh over all (global, multi-host) devices, or `devices`, with axes AXES.

    Axes are `Auto`: shardings propagate through the program from the annotated inputs/outputs.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = mesh_shape(shape, len(devices))
    try:  # topology-aware placement on TPU/GPU slices
        grid = mesh_utils.create_device_mesh(sizes, devices)
    except (AssertionError, NotImplementedError, ValueError):
        grid = np.asarray(devices).reshape(sizes)
    return Mesh(grid, AXES, axis_types=(AxisType.Auto,) * len(AXES))


def batch_size_divisor(mesh: Mesh) -> int:
    """The batch must be a multiple of this to split over the data-parallel axes."""
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def check_batch(batch: int, mesh: Mesh, what: str = "batch") -> None:
    div = batch_size_divisor(mesh)
    if batch % div:
        raise ValueError(
            f"{what}={batch} is not divisible by the mesh's data-parallel size {div} "
            f"(data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']})"
        )


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Leading (batch) dimension over data x fsdp, the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def to_device(x, sharding: NamedSharding) -> jax.Array:
    """A host array every process holds whole -> a global array; each process places only its
    own devices' slices (works on one host and on many). A jax.Array is resharded if need be."""
    if isinstance(x, jax.Array):
        return x if x.sharding == sharding else jax.device_put(x, sharding)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def to_host(x) -> np.ndarray:
    """A global array -> the whole value as numpy on every process (gathers across hosts)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def default_config():
    """config.mesh: axis sizes; -1 takes the devices the others leave."""
    from ml_collections import ConfigDict

    return ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})


# A size of -1 takes the devices the other axes leave.
RULES = {axis: R.Range(1, integer=True, also=(-1,)) for axis in ("data", "fsdp", "tensor")}


def on_own_rows(fn, args: tuple, head_axes: tuple, heads: int, check_vma: bool = True):
    """fn(*args), run by each device on its own rows and heads when a context mesh is set
    (`jax.set_mesh`): every argument's leading dim split over the data-parallel axes and its dim
    `head_axes[i]` (None: no heads) over "tensor" where `heads` divide by its size; the result
    laid out as args[0]. Without such a mesh, or rows it cannot divide, fn(*args). For scatters
    into caches and for custom calls (kernels): the partitioner, left to place either over a
    buffer split two ways, gathers it whole first. check_vma off for Pallas kernels, whose output
    shapes do not say how they vary over the mesh."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not set(BATCH_AXES) <= set(mesh.axis_names):
        return fn(*args)
    rows = math.prod(mesh.shape[a] for a in BATCH_AXES)
    if any(x.shape[0] % rows for x in jax.tree.leaves(args)):
        return fn(*args)
    tensor = mesh.shape.get("tensor", 1)
    split = "tensor" if tensor > 1 and heads % tensor == 0 else None
    spec = lambda axis: (
        P(BATCH_AXES) if axis is None else P(BATCH_AXES, *[None] * (axis - 1), split)
    )
    specs = tuple(spec(axis) for axis in head_axes)
    run = jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=specs[0], check_vma=check_vma)
    return run(*args)
