"""The contrastive losses' definitions: logit scales, pair logits and the dense references.

CLIP's softmax (InfoNCE) and SigLIP's sigmoid loss as plain functions of L2-normalised
embeddings `zimg, ztxt: [B, D]` and scalar parameters (the objective module owns and
initialises the parameters). The dense references hold the whole `[B, B]` logit matrix in one
place; every sharded fast path (contrastive_losses.py, softmax_ring.py) is tested against them.

The softmax log-temperature is clamped here at `log(100)` (CLIP's cap); the caller passes the raw
parameter. The sigmoid log-temperature is not clamped (as in SigLIP).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

SOFTMAX_MAX_LOG_TEMP = math.log(100.0)

Metrics = dict[str, jax.Array]


def hits(logits: jax.Array, axis: int, offset: jax.Array | int = 0) -> jax.Array:
    """Count of rows (axis=1) / columns (axis=0) whose first argmax is the matching index."""
    n = logits.shape[1 - axis]
    return jnp.sum(jnp.argmax(logits, axis=axis) == offset + jnp.arange(n)).astype(jnp.float32)


def logit_scale(kind: str, log_temp: jax.Array) -> jax.Array:
    """The factor on the cosine similarities: exp(log_temp), for "softmax" capped at 100."""
    if kind == "softmax":
        return jnp.exp(jnp.minimum(log_temp, SOFTMAX_MAX_LOG_TEMP))
    return jnp.exp(log_temp)


def pair_logits(
    kind: str, zimg: jax.Array, ztxt: jax.Array, log_temp: jax.Array, bias: jax.Array | None = None
) -> jax.Array:
    """The logits the loss `kind` compares: zimg [N, D], ztxt [M, D] -> float32 [N, M],
    logit_scale * cosine (+ bias for "sigmoid")."""
    logits = logit_scale(kind, log_temp) * (zimg.astype(jnp.float32) @ ztxt.astype(jnp.float32).T)
    return logits + bias if kind == "sigmoid" else logits


def softmax_loss_dense(
    zimg: jax.Array, ztxt: jax.Array, log_temp: jax.Array
) -> tuple[jax.Array, Metrics]:
    """Symmetric CLIP loss on the full `[B, B]` logit matrix (the reference).

    Args:
      zimg, ztxt: `[B, D]` L2-normalised embeddings; row i of each is a matching pair.
      log_temp: scalar; scale = exp(min(log_temp, log(100))).
    Returns:
      loss: scalar, mean over the batch of (CE(image->text) + CE(text->image)) / 2.
      metrics: accuracy_i2t, accuracy_t2i (first argmax hits the pair), scale.
    """
    scale = logit_scale("softmax", log_temp)
    logits = pair_logits("softmax", zimg, ztxt, log_temp)
    pos = jnp.diagonal(logits)
    per_pair = jax.nn.logsumexp(logits, axis=1) + jax.nn.logsumexp(logits, axis=0) - 2 * pos
    batch = zimg.shape[0]
    metrics = {
        "accuracy_i2t": hits(logits, axis=1) / batch,
        "accuracy_t2i": hits(logits, axis=0) / batch,
        "scale": scale,
    }
    return jnp.mean(per_pair) / 2, metrics


def sigmoid_loss_dense(
    zimg: jax.Array, ztxt: jax.Array, log_temp: jax.Array, bias: jax.Array
) -> tuple[jax.Array, Metrics]:
    """SigLIP loss on the full `[B, B]` logit matrix (the reference).

    Args:
      zimg, ztxt: `[B, D]` L2-normalised embeddings; row i of each is a matching pair.
      log_temp: scalar, scale = exp(log_temp) (no clamp). bias: scalar added to every logit.
    Returns:
      loss: -sum over all B*B pairs of log_sigmoid(label * logit) / B, label +1 on the diagonal.
      metrics: accuracy_i2t, accuracy_t2i, scale, bias.
    """
    scale = logit_scale("sigmoid", log_temp)
    logits = pair_logits("sigmoid", zimg, ztxt, log_temp, bias)
    batch = zimg.shape[0]
    labels = 2 * jnp.eye(batch) - 1
    metrics = {
        "accuracy_i2t": hits(logits, axis=1) / batch,
        "accuracy_t2i": hits(logits, axis=0) / batch,
        "scale": scale,
        "bias": jnp.asarray(bias, jnp.float32),
    }
    return -jnp.sum(jax.nn.log_sigmoid(labels * logits)) / batch, metrics
