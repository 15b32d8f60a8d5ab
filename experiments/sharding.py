"""Device mesh and logical-axis sharding, driven by the config.

Models annotate logical axes only (`batch, length, embed, mlp, heads, kv, vocab,
patches, latents`). The config maps those to the mesh axes `data`, `fsdp`,
`tensor` in one table, as MaxText's `logical_axis_rules` does:

    config.mesh = (("data", -1), ("fsdp", 1), ("tensor", 1))   # one -1 at most
    config.sharding_rules = (("batch", ("data", "fsdp")), ("embed", "fsdp"), ...)
    config.mesh_dcn = (("data", 2),)   # optional: multi-slice / multi-host level
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# FSDP over the embedding dimension, tensor parallelism over MLP/heads/vocab.
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("length", None),
    ("patches", None),
    ("latents", None),
)


class ShardingError(ValueError):
    """A mesh or batch layout that cannot work on the available devices."""


def mesh_shape(axes: Sequence[tuple[str, int]], num_devices: int) -> dict[str, int]:
    """Resolves at most one -1 in `axes` so the product equals `num_devices`."""
    axes = [(str(name), int(size)) for name, size in axes]
    names = [name for name, _ in axes]
    unknown = sorted(set(names) - set(MESH_AXES))
    if unknown or len(set(names)) != len(names):
        raise ShardingError(
            f"config.mesh axes must be distinct names from {MESH_AXES}; got {names}."
        )
    free = [name for name, size in axes if size == -1]
    if len(free) > 1:
        raise ShardingError(f"config.mesh may hold at most one -1; got {axes}.")
    if any(size == 0 or size < -1 for _, size in axes):
        raise ShardingError(f"config.mesh sizes must be positive or -1; got {axes}.")
    fixed = math.prod(size for _, size in axes if size != -1)
    if num_devices % fixed:
        raise ShardingError(
            f"config.mesh {axes} needs a multiple of {fixed} devices, but {num_devices} are "
            "available. Change the sizes or use -1 for one axis."
        )
    sizes = {name: (num_devices // fixed if size == -1 else size) for name, size in axes}
    if math.prod(sizes.values()) != num_devices:
        raise ShardingError(
            f"config.mesh {axes} uses {math.prod(sizes.values())} devices but {num_devices} "
            "are available. Put -1 on one axis to absorb the rest."
        )
    return sizes


def make_mesh(
    axes: Sequence[tuple[str, int]],
    dcn_axes: Sequence[tuple[str, int]] = (),
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """Builds a mesh over all `MESH_AXES` (missing ones get size 1), Auto axis types.

    `dcn_axes` multiplies the listed axes across slices/hosts (data-centre network
    level), leaving `axes` for the fast interconnect inside each slice.
    """
    devices = list(jax.devices() if devices is None else devices)
    dcn = {name: int(size) for name, size in dcn_axes}
    num_slices = math.prod(dcn.values()) if dcn else 1
    if len(devices) % num_slices:
        raise ShardingError(f"config.mesh_dcn {dcn_axes} does not divide {len(devices)} devices.")
    ici = mesh_shape(axes, len(devices) // num_slices)
    ici_shape = [ici.get(name, 1) for name in MESH_AXES]
    if num_slices > 1:
        dcn_shape = [dcn.get(name, 1) for name in MESH_AXES]
        grid = mesh_utils.create_hybrid_device_mesh(ici_shape, dcn_shape, devices)
    else:
        try:
            grid = mesh_utils.create_device_mesh(ici_shape, devices)
        except (ValueError, AssertionError, NotImplementedError):
            # CPU and odd topologies: a plain reshape is fine.
            grid = np.asarray(devices).reshape(ici_shape)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
    return tuple(a for a in BATCH_AXES if a in mesh.shape)


def data_parallel_size(mesh: Mesh) -> int:
    return math.prod(mesh.shape[a] for a in batch_axes(mesh))


def check_batch_size(global_batch_size: int, mesh: Mesh, what: str = "config.batch_size") -> None:
    """The global batch must split evenly over the data-parallel axes and processes."""
    dp = data_parallel_size(mesh)
    if global_batch_size <= 0 or global_batch_size % dp:
        sizes = {a: mesh.shape[a] for a in batch_axes(mesh)}
        raise ShardingError(
            f"{what}={global_batch_size} cannot be split over the data-parallel mesh axes "
            f"{sizes} (product {dp}). Use a multiple of {dp}, e.g. "
            f"{max(dp, global_batch_size // dp * dp)}, or change config.mesh."
        )
    if global_batch_size % jax.process_count():
        raise ShardingError(
            f"{what}={global_batch_size} is not divisible by the {jax.process_count()} processes."
        )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension over the data-parallel axes, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(batch_axes(mesh)))


def _fit_spec(shape: Sequence[int], spec: PartitionSpec, mesh: Mesh) -> PartitionSpec:
    """Drops mesh axes that do not divide their dimension (replicate instead of failing)."""
    fitted = []
    for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)), strict=True):
        names = (entry,) if isinstance(entry, str) else tuple(entry or ())
        kept, prod = [], 1
        for name in names:
            if dim % (prod * mesh.shape[name]) == 0:
                kept.append(name)
                prod *= mesh.shape[name]
        fitted.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    return PartitionSpec(*fitted)


def logical_shardings(abstract_variables, mesh: Mesh, rules) -> object:
    """Mesh shardings for a tree of boxed (logically partitioned) abstract variables.

    Returns a tree matching the *unboxed* variables. Unannotated leaves are replicated.
    """
    specs = nn.get_partition_spec(abstract_variables)
    shardings = nn.logical_to_mesh_sharding(specs, mesh, rules)
    unboxed = strip_boxes(abstract_variables)
    return jax.tree.map(
        lambda leaf, sh: NamedSharding(mesh, _fit_spec(leaf.shape, sh.spec, mesh)),
        unboxed,
        shardings,
    )


def strip_boxes(tree):
    """Unboxes logically-partitioned leaves without applying sharding constraints."""
    is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)  # noqa: E731
    return jax.tree.map(lambda x: x.value if is_box(x) else x, tree, is_leaf=is_box)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def to_global_batch(local_batch: dict, mesh: Mesh) -> dict:
    """Assembles per-process numpy batches into global arrays sharded over batch axes."""
    sharding = batch_sharding(mesh)

    def to_global(x):
        x = np.asarray(x)
        # Explicit global shape: jax then rejects process layouts where the per-process rows
        # would not be distinct batch shards (instead of silently mixing data).
        shape = (x.shape[0] * jax.process_count(), *x.shape[1:])
        return jax.make_array_from_process_local_data(sharding, x, shape)

    return jax.tree.map(to_global, local_batch)
