"""Device mesh and logical-axis sharding, driven by the config.

Models annotate logical axes only (`batch, length, embed, mlp, heads, kv, vocab,
patches, latents`). The config maps those to the mesh axes `data`, `fsdp`,
`tensor` in one table, as MaxText's `logical_axis_rules` does:

    config.mesh = (("data", -1), ("fsdp", 1), ("tensor", 1))   # one -1 at most
    config.parallelism = "fsdp_tp"     # a named preset of rules: "dp", "fsdp", "fsdp_tp"
    config.sharding_rules = (("batch", ("data", "fsdp")), ("embed", "fsdp"), ...)  # or explicit
    config.mesh_dcn = (("data", 2),)   # optional: multi-slice / multi-host level
    config.sharding_strict = True      # fail, don't replicate, where an axis does not divide
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils  # create_hybrid_device_mesh: see hybrid_device_grid
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


def _replicated_except(**mapped) -> tuple:
    return tuple((name, mapped.get(name)) for name, _ in DEFAULT_RULES)


# Named parallelism presets (`config.parallelism`): logical-axis rules over the same mesh axes.
PRESETS = {
    # Pure data parallelism: parameters and optimizer state replicated on every device.
    "dp": _replicated_except(batch=BATCH_AXES),
    # Fully sharded data parallelism (ZeRO-3 style): parameters sharded over "fsdp" by their
    # embedding dimension, gathered per layer for compute.
    "fsdp": _replicated_except(batch=BATCH_AXES, embed="fsdp"),
    # FSDP + Megatron-style tensor parallelism: attention heads, the MLP hidden dimension and
    # the vocabulary split over "tensor".
    "fsdp_tp": DEFAULT_RULES,
}
DEFAULT_PRESET = "fsdp_tp"


def _tuples(x):
    """Rules read back from JSON are lists; flax wants hashable tuples."""
    return tuple(_tuples(v) for v in x) if isinstance(x, list | tuple) else x


def config_rules(
    explicit: Sequence | None, parallelism: str | None, mesh_sizes: Mapping[str, int] | None = None
) -> tuple:
    """The logical-axis rules a config asks for: `config.sharding_rules` (`explicit`) when
    given, else the preset `config.parallelism` (default "fsdp_tp").

    With a preset and the mesh's axis sizes, a mesh axis of several devices that the preset
    never uses is an error (those devices would only repeat the others' work)."""
    if explicit:
        return _tuples(explicit)
    name = parallelism or DEFAULT_PRESET
    if name not in PRESETS:
        raise ShardingError(
            f"Unknown config.parallelism {name!r}: use one of {sorted(PRESETS)}, or give "
            "config.sharding_rules explicitly."
        )
    rules = PRESETS[name]
    if mesh_sizes is not None:
        used = {a for _, axes in rules for a in _names(axes)}
        idle = {a: n for a, n in mesh_sizes.items() if n > 1 and a not in used}
        if idle:
            raise ShardingError(
                f"config.parallelism={name!r} uses no mesh axis {sorted(idle)}, but config.mesh "
                f"gives {idle} devices: set those axes to 1 (their devices would repeat the "
                "others' work), or choose another preset."
            )
    return rules


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
    """Builds a topology-aware mesh over all `MESH_AXES` (missing ones get size 1).

    `dcn_axes` multiplies the listed axes across slices (TPU) or processes (elsewhere), the
    data-centre network level, leaving `axes` for the fast interconnect inside each. Every
    axis is `AxisType.Auto`: Linen's logical constraints reject Explicit axes.

    Raises:
      ShardingError: the sizes do not fit the devices or their physical topology.
    """
    devices = list(jax.devices() if devices is None else devices)
    dcn = {name: int(size) for name, size in dcn_axes}
    num_slices = math.prod(dcn.values()) if dcn else 1
    if len(devices) % num_slices:
        raise ShardingError(f"config.mesh_dcn {dcn_axes} does not divide {len(devices)} devices.")
    ici = mesh_shape(axes, len(devices) // num_slices)
    ici_shape = tuple(ici.get(name, 1) for name in MESH_AXES)
    axis_types = (AxisType.Auto,) * len(MESH_AXES)
    if num_slices > 1:
        dcn_shape = tuple(dcn.get(name, 1) for name in MESH_AXES)
        grid = hybrid_device_grid(ici_shape, dcn_shape, devices)
        return Mesh(grid, MESH_AXES, axis_types=axis_types)
    if devices[0].platform == "cpu":
        # No interconnect to follow: jax lays CPU devices out in the given order.
        logging.info("CPU devices have no topology: mesh %s is a plain reshape.", ici)
    try:
        return jax.make_mesh(ici_shape, MESH_AXES, axis_types=axis_types, devices=devices)
    except (ValueError, AssertionError, NotImplementedError) as e:
        # No silent reshape here: it would lose the topology and run collectives slowly.
        raise ShardingError(
            f"config.mesh {ici} does not fit the physical topology of the {len(devices)} "
            f"{devices[0].device_kind} devices: {e}. Choose axis sizes that tile the chip "
            "grid, and put axes that span slices in config.mesh_dcn."
        ) from e


def hybrid_device_grid(
    ici_shape: Sequence[int], dcn_shape: Sequence[int], devices: Sequence[jax.Device]
) -> np.ndarray:
    """[*ici_shape * dcn_shape] devices: each slice (or process) one block along the DCN axes.

    The DCN units are TPU slices; on CPU and GPU, whose devices name no slice that the
    network follows, they are processes (hosts).
    """
    by_process = devices[0].platform != "tpu"
    try:
        # jax 0.10 has no non-experimental hybrid mesh (jax.make_mesh rejects multi-slice).
        return mesh_utils.create_hybrid_device_mesh(
            ici_shape, dcn_shape, devices, process_is_granule=by_process
        )
    except ValueError as e:
        unit = "processes" if by_process else "slices"
        raise ShardingError(
            f"config.mesh_dcn {dict(zip(MESH_AXES, dcn_shape, strict=True))} needs "
            f"{math.prod(dcn_shape)} {unit} of {math.prod(ici_shape)} devices each: {e}. "
            "Change config.mesh_dcn or config.mesh."
        ) from e


def _sizes(mesh: Mesh | Mapping[str, int]) -> Mapping[str, int]:
    return mesh.shape if isinstance(mesh, Mesh) else mesh


def batch_axes(mesh: Mesh | Mapping[str, int]) -> tuple[str, ...]:
    return tuple(a for a in BATCH_AXES if a in _sizes(mesh))


def data_parallel_size(mesh: Mesh | Mapping[str, int]) -> int:
    return math.prod(_sizes(mesh)[a] for a in batch_axes(mesh))


def check_batch_size(
    global_batch_size: int,
    mesh: Mesh | Mapping[str, int],
    num_processes: int | None = None,
    what: str = "config.batch_size",
) -> None:
    """The global batch must split evenly over the data-parallel axes and the processes.

    `mesh`: a Mesh, or the axis sizes a config's mesh will have (checked before building it);
    `num_processes` defaults to this run's process count."""
    dp = data_parallel_size(mesh)
    if global_batch_size <= 0 or global_batch_size % dp:
        sizes = {a: _sizes(mesh)[a] for a in batch_axes(mesh)}
        raise ShardingError(
            f"{what}={global_batch_size} cannot be split over the data-parallel mesh axes "
            f"{sizes} (product {dp}). Use a multiple of {dp}, e.g. "
            f"{max(dp, global_batch_size // dp * dp)}, or change config.mesh."
        )
    processes = jax.process_count() if num_processes is None else num_processes
    if global_batch_size % processes:
        raise ShardingError(
            f"{what}={global_batch_size} is not divisible by the {processes} processes."
        )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension over the data-parallel axes, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(batch_axes(mesh)))


def _names(entry) -> tuple[str, ...]:
    """The mesh axes of one PartitionSpec entry (None, "fsdp" or ("data", "fsdp"))."""
    return (entry,) if isinstance(entry, str) else tuple(entry or ())


def _padded(spec: PartitionSpec, ndim: int) -> tuple:
    """`spec`'s entries, one per dimension (a spec may name fewer than `ndim`)."""
    return tuple(spec) + (None,) * (ndim - len(spec))


def _fit_spec(shape: Sequence[int], spec: PartitionSpec, mesh: Mesh) -> PartitionSpec:
    """Drops mesh axes that do not divide their dimension (replicate instead of failing)."""
    fitted = []
    for dim, entry in zip(shape, _padded(spec, len(shape)), strict=True):
        kept, prod = [], 1
        for name in _names(entry):
            if dim % (prod * mesh.shape[name]) == 0:
                kept.append(name)
                prod *= mesh.shape[name]
        fitted.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    return PartitionSpec(*fitted)


@dataclasses.dataclass(frozen=True)
class DroppedAxes:
    """A parameter that the rules shard over mesh axes which do not divide its dimensions."""

    path: str  # "img/encoder/block_0/attn/query/kernel"
    shape: tuple[int, ...]
    logical: PartitionSpec  # the model's logical names, e.g. P("embed", "heads", "kv")
    wanted: PartitionSpec  # what the rules map them to, e.g. P("fsdp", "tensor", None)
    kept: PartitionSpec  # what divides and is used, e.g. P("fsdp", None, None)

    def __str__(self) -> str:
        return (
            f"{self.path} {list(self.shape)} {self.logical}: wanted {self.wanted}, kept {self.kept}"
        )


def _fitted_specs(abstract_variables, mesh: Mesh, rules) -> tuple[Any, list[DroppedAxes]]:
    """(tree of fitted mesh PartitionSpecs matching the unboxed variables, what was dropped)."""
    logical = nn.get_partition_spec(abstract_variables)
    wanted = nn.logical_to_mesh_sharding(logical, mesh, rules)
    dropped: list[DroppedAxes] = []

    def fit(path, leaf, names: PartitionSpec, sharding: NamedSharding) -> PartitionSpec:
        kept = _fit_spec(leaf.shape, sharding.spec, mesh)
        if [_names(e) for e in kept] != [_names(e) for e in _padded(sharding.spec, leaf.ndim)]:
            key = jax.tree_util.keystr(path, simple=True, separator="/")
            dropped.append(DroppedAxes(key, tuple(leaf.shape), names, sharding.spec, kept))
        return kept

    specs = jax.tree.map_with_path(fit, strip_boxes(abstract_variables), logical, wanted)
    return specs, dropped


def unsharded_report(abstract_variables, mesh: Mesh, rules) -> list[DroppedAxes]:
    """Parameters whose rule-given mesh axes do not divide their dimensions (in tree order).

    Those dimensions are replicated instead (e.g. 12 heads on tensor=8 turn tensor
    parallelism off for that kernel). Dimensions the rules map to no mesh axis are
    replicated by design and not reported.
    """
    return _fitted_specs(abstract_variables, mesh, rules)[1]


def format_report(dropped: Sequence[DroppedAxes], mesh: Mesh, limit: int = 20) -> str:
    """A header and one line per parameter (at most `limit`, then a count of the rest)."""
    lines = [
        f"{len(dropped)} parameter(s) cannot be sharded as config.sharding_rules ask on mesh "
        f"{dict(mesh.shape)}; the dimensions an axis does not divide are replicated:"
    ]
    lines += [f"  {d}" for d in dropped[:limit]]
    if len(dropped) > limit:
        lines.append(f"  ... and {len(dropped) - limit} more.")
    return "\n".join(lines)


def _check_query_heads(dropped: Sequence[DroppedAxes], mesh: Mesh) -> None:
    """Tensor parallelism splits attention by query heads: an axis that cannot split them
    would leave whole attention layers replicated, so it is an error, not a warning (key /
    value heads fewer than the axis, as in multi-query attention, may stay replicated)."""
    bad = []
    for d in dropped:
        if not d.path.endswith("query/kernel") or "heads" not in tuple(d.logical):
            continue
        i = tuple(d.logical).index("heads")
        lost = set(_names(_padded(d.wanted, len(d.shape))[i])) - set(
            _names(_padded(d.kept, len(d.shape))[i])
        )
        if lost:
            sizes = {a: mesh.shape[a] for a in sorted(lost)}
            bad.append(f"  {d.path}: {d.shape[i]} heads, mesh axes {sizes}")
    if bad:
        raise ShardingError(
            "The mesh cannot split these attention layers' query heads (config.sharding_rules "
            "map 'heads' to the axes named):\n" + "\n".join(bad) + "\nUse a tensor-parallel "
            "size that divides every num_heads (config.mesh), or map 'heads' to None in "
            "config.sharding_rules to replicate attention."
        )


def logical_shardings(
    abstract_variables, mesh: Mesh, rules, *, strict: bool = False, report: bool = True
) -> Any:
    """Mesh shardings for a tree of boxed (logically partitioned) abstract variables.

    Returns a tree matching the *unboxed* variables. Unannotated leaves are replicated.
    Mesh axes that do not divide a dimension are dropped for it (see `unsharded_report`):
    logged as one warning unless `report=False` (e.g. for optimizer state that repeats
    the params' layout), or under `strict` an error.

    Raises:
      ShardingError: `strict` and some parameter lost a mesh axis.
    """
    specs, dropped = _fitted_specs(abstract_variables, mesh, rules)
    _check_query_heads(dropped, mesh)
    if dropped and strict:
        raise ShardingError(
            f"{format_report(dropped, mesh)}\nChange config.mesh so each axis size divides "
            "those dimensions, or map their logical axes to other mesh axes (or None) in "
            "config.sharding_rules."
        )
    if dropped and report:
        logging.warning("%s", format_report(dropped, mesh))
    return jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs)


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
