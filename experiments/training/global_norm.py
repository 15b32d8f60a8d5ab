"""The global L2 norm of a pytree with few reductions, and a clip on it.

`optax.tree.norm` reduces every leaf on its own and adds the results in one fusion: for the
grad-norm and param-norm metrics of a ViT-S/16 CLIP step that is ~600 reductions and a final
add with ~600 operands, which XLA:CPU compiles slowly (that add alone was ~100 ms of LLVM
time). Here the small unsharded leaves (biases, norm scales: most leaves, few bytes) are
raveled into one float32 vector and reduced once; every large or sharded leaf keeps its own
reduction (XLA compiles same-shaped ones once); the partial sums are added as one vector.
Whether a leaf is sharded comes from `layout` (the abstract params with their mesh
shardings) when given; without it, small sharded leaves are gathered into the vector (correct,
slower).

Measured on a ViT-S/16-sized tree (2 cores, tcmalloc; compile / run, +-10%): per-leaf
reductions (optax) 0.58 s / 9.8 ms, this 0.29 s / 8.3 ms, one concatenation of all leaves
0.13 s / 26 ms (it copies every gradient: XLA hands the reduction to a library kernel and
materialises the concatenation), a variadic reduce per shape group 0.9 s / 78 ms. Stacking
same-shaped leaves also copies them.
"""

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

# Leaves up to this many elements are raveled into the shared vector: copying them is cheap
# (at most 256 KiB each in float32), and they are most of a model's leaves.
SMALL_LEAF_SIZE = 1 << 16


def norm_of_leaves(leaves: Sequence[jax.Array], layout: Sequence[Any] | None = None) -> jax.Array:
    """sqrt(sum of squares) over `leaves` in float32; `layout[i]` (anything with a
    `.sharding`, or None) describes `leaves[i]`."""
    if layout is not None and len(layout) != len(leaves):
        raise ValueError(f"layout has {len(layout)} leaves for {len(leaves)} arrays")
    small, partials = [], []
    for i, leaf in enumerate(leaves):
        leaf = leaf.astype(jnp.float32)
        sharded = layout is not None and _is_sharded(getattr(layout[i], "sharding", None))
        if leaf.size <= SMALL_LEAF_SIZE and not sharded:
            small.append(leaf.reshape(-1))
        else:
            partials.append(jnp.sum(jnp.square(leaf)))
    if small:
        partials.append(jnp.sum(jnp.square(jnp.concatenate(small))))
    if not partials:
        return jnp.zeros((), jnp.float32)
    return jnp.sqrt(jnp.sum(jnp.stack(partials)))


def _is_sharded(sharding: Any) -> bool:
    return sharding is not None and not sharding.is_fully_replicated


def global_norm(tree: Any, layout: Any = None) -> jax.Array:
    """The L2 norm of all leaves of `tree` (= optax.tree.norm), reduced as described above.

    `layout`: a tree of the same structure whose leaves carry `.sharding` (e.g. the abstract
    params built by `train_state.with_mesh_shardings`), or None.
    """
    leaves = jax.tree.leaves(tree)
    return norm_of_leaves(leaves, None if layout is None else jax.tree.leaves(layout))


def clip_by_global_norm(max_norm: float, layout: Sequence[Any] | None = None):
    """optax.clip_by_global_norm with the norm above: scales updates by
    min(1, max_norm / norm). `layout`, when given, describes the updates' leaves in order
    (a performance hint only: a tree with another number of leaves is reduced without it)."""
    if not max_norm > 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm}")

    def init_fn(params):
        del params
        return optax.EmptyState()  # the clip depends only on the current updates

    def update_fn(updates, state, params=None):
        del params
        leaves = jax.tree.leaves(updates)
        hint = layout if layout is not None and len(layout) == len(leaves) else None
        norm = norm_of_leaves(leaves, hint)
        under = norm < max_norm  # then the updates pass through unchanged, as in optax

        def clip(g):
            return jnp.where(under, g, (g / norm.astype(g.dtype)) * max_norm)

        return jax.tree.map(clip, updates), state

    return optax.GradientTransformation(init_fn, update_fn)
