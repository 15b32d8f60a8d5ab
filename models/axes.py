"""Logical sharding annotations shared by every module (see models/layers.py)."""

import flax.linen as nn
import jax

# Logical name of the depth axis that `nn.scan` adds to stacked block parameters.
LAYERS_AXIS = "layers"

part = nn.with_logical_partitioning


def constrain(x: jax.Array, names: tuple[str | None, ...]) -> jax.Array:
    """Logical sharding constraint; skipped when ranks differ (e.g. pooled [B, 1, D])."""
    if x.ndim != len(names):
        return x
    return nn.with_logical_constraint(x, names)
