"""Gradient accumulation over k micro-batches, exact for losses that couple the batch.

A contrastive loss is not a mean of per-example terms: every example is a negative for every
other, so averaging k micro-batch gradients would train with k times fewer negatives. The
exact scheme (GradCache, Gao et al. 2021) splits the objective in two:

  features(params, micro-batch) -> per-example features (the embeddings), the costly part;
  loss_from_features(params, features of the whole batch) -> (loss, metrics), cheap.

1. the features of every micro-batch, one at a time, without keeping activations;
2. loss and gradients with respect to the whole batch's features (and the loss's own
   parameters, e.g. the temperature);
3. per micro-batch, the features are recomputed with a VJP fed that micro-batch's feature
   gradient, and the parameter gradients are summed.

Peak activation memory is one micro-batch's; the gradient is the whole batch's (up to float
rounding). An objective opts in by defining the two methods `features` and
`loss_from_features`; the trainer never names an objective.

Micro-batch m takes rows m, m + k, m + 2k, ... so every device holds an equal share of each
one (the batch is sharded by contiguous rows); the loss sees the batch in that order, which
changes nothing for a loss that treats the batch as a set.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

SPLIT_METHODS = ("features", "loss_from_features")


def supports(model: nn.Module) -> bool:
    return all(callable(getattr(model, m, None)) for m in SPLIT_METHODS)


def check(model: nn.Module, microbatches: int, batch_size: int, data_parallel: int) -> None:
    """Raises ValueError (before anything compiles) for a count that cannot work."""
    if not isinstance(microbatches, int) or microbatches < 1:
        raise ValueError(f"config.microbatches must be an integer >= 1, got {microbatches!r}")
    if microbatches == 1:
        return
    if not supports(model):
        raise ValueError(
            f"config.microbatches={microbatches}: objective {type(model).__name__} does not "
            f"split into {SPLIT_METHODS}, which exact accumulation needs; use microbatches=1."
        )
    if batch_size % microbatches:
        raise ValueError(
            f"config.microbatches={microbatches} does not divide config.batch_size={batch_size}."
        )
    if (batch_size // microbatches) % data_parallel:
        raise ValueError(
            f"config.microbatches={microbatches}: micro-batches of {batch_size // microbatches} "
            f"examples do not split over the {data_parallel} batch devices; choose microbatches "
            f"so that batch_size / microbatches is a multiple of {data_parallel}."
        )


def _micro(batch: dict, k: int) -> dict:
    """[B, ...] -> [k, B / k, ...], micro-batch m = rows m, m + k, ... (batch stays sharded)."""

    def split(x):
        x = x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)
        return nn.with_logical_constraint(x, (None, "batch") + (None,) * (x.ndim - 2))

    return jax.tree.map(split, batch)


def loss_and_grads(model: nn.Module, params: Any, batch: dict, k: int, rng: jax.Array):
    """((loss, metrics), grads) of the whole batch, computed over k micro-batches."""
    micro = _micro(batch, k)

    def features(p, mb, m):
        rngs = {"dropout": jax.random.fold_in(rng, m)}
        return model.apply({"params": p}, mb, train=True, rngs=rngs, method="features")

    def forward(_, xs):
        mb, m = xs
        return None, jax.lax.stop_gradient(features(params, mb, m))

    index = jnp.arange(k)
    _, feats = jax.lax.scan(forward, None, (micro, index))  # [k, B / k, ...]
    whole = jax.tree.map(lambda f: f.reshape(-1, *f.shape[2:]), feats)

    def head(p, f):
        return model.apply({"params": p}, f, method="loss_from_features")

    (loss, metrics), (grads, feat_grads) = jax.value_and_grad(head, argnums=(0, 1), has_aux=True)(
        params, whole
    )
    feat_grads = jax.tree.map(lambda g, f: g.reshape(f.shape), feat_grads, feats)

    def backward(acc, xs):
        mb, m, g = xs
        _, vjp = jax.vjp(lambda p: features(p, mb, m), params)
        return jax.tree.map(jnp.add, acc, vjp(g)[0]), None

    grads, _ = jax.lax.scan(backward, grads, (micro, index, feat_grads))
    return (loss, metrics), grads
