"""The ring of batch devices that the sharded contrastive losses run on.

Which mesh axes shard the batch, the `ppermute` permutation that moves a chunk one device along
the ring, and the running first-argmax that the ring passes keep for their accuracy metrics.
Batch axes missing from the mesh are skipped; those present shard the batch in mesh order (as
`P(("data", "fsdp"))` does), whatever order `batch_axes` lists them in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

DEFAULT_BATCH_AXES = ("data", "fsdp")


def batch_mesh_axes(mesh, batch_axes: Sequence[str]) -> tuple:
    """Returns (mesh, batch axes present in it, their device count); mesh=None -> context."""
    if mesh is None:
        mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return mesh, (), 1
    if isinstance(batch_axes, str):
        batch_axes = (batch_axes,)
    # Mesh order, not `batch_axes` order: ppermute linearises a tuple of axes in mesh order while
    # axis_index and the sharding follow the tuple, so only mesh order keeps the three in step.
    axes = tuple(a for a in mesh.axis_names if a in batch_axes)
    return mesh, axes, math.prod(mesh.shape[a] for a in axes)


def check_divisible(batch: int, n: int, axes: tuple[str, ...]) -> None:
    """ValueError unless the global batch splits evenly over the n devices of `axes`."""
    if batch % n:
        raise ValueError(f"global batch {batch} is not divisible by the {n} devices of {axes}")


def ring_perm(n: int) -> list[tuple[int, int]]:
    """The `ppermute` pairs of one ring move: device k sends to k-1, so at ring step s device k
    holds the chunk owned by (k + s) % n."""
    return [(i, (i - 1) % n) for i in range(n)]


def running_argmax(
    val: jax.Array, idx: jax.Array, new_val: jax.Array, new_idx: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Running first-argmax over [b] candidates: take the new one where it is larger, or equal
    with a lower index."""
    take = (new_val > val) | ((new_val == val) & (new_idx < idx))
    return jnp.where(take, new_val, val), jnp.where(take, new_idx, idx)
