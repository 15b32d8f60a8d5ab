"""Contrastive image-text losses: CLIP softmax (InfoNCE) and SigLIP sigmoid.

Pure functions of L2-normalised embeddings `zimg, ztxt: [B, D]` and scalar parameters; the
objective module owns the parameters (initialise them with the `*_INIT_*` constants below).

Each loss has a dense reference (`*_dense`, the whole `[B, B]` logit matrix in one place) and a
sharded fast path that is exact under data/fsdp sharding (negatives are global) while the
per-device logits grow with the local batch `b = B / n`, not with `B * B`:

- `softmax_loss_gathered`: all-gather both embeddings, each device scores its own `b` rows
  against all `B` columns in both directions (`[b, B]` logits), psum.
- `softmax_ring.softmax_loss_ring` (impl "ring"): the same ring for the softmax loss, with
  online log-sum-exps, so its memory too grows with `b` only.
- `sigmoid_loss_ring`: keep the local images, pass text chunks `[b, D]` around the ring of
  batch devices with `ppermute` (`[b, b]` logits per step). A custom VJP runs a second ring pass
  in the backward, so autodiff never stacks the visited chunks: no device ever holds `[B, D]`
  text or `[B, b]` logits, forward or backward.

Batch axes missing from the mesh are skipped; those present shard the batch in mesh order (as
`P(("data", "fsdp"))` does), whatever order `batch_axes` lists them in.

The softmax log-temperature is clamped here at `log(100)` (CLIP's cap); the caller passes the raw
parameter. The sigmoid log-temperature is not clamped (as in SigLIP).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

SOFTMAX_INIT_LOG_TEMP = math.log(1 / 0.07)
SOFTMAX_MAX_LOG_TEMP = math.log(100.0)
SIGMOID_INIT_LOG_TEMP = math.log(10.0)
SIGMOID_INIT_BIAS = -10.0

DEFAULT_BATCH_AXES = ("data", "fsdp")
IMPLS = ("dense", "sharded", "ring", "gathered")

Metrics = dict[str, jax.Array]


def _hits(logits: jax.Array, axis: int, offset: jax.Array | int = 0) -> jax.Array:
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
        "accuracy_i2t": _hits(logits, axis=1) / batch,
        "accuracy_t2i": _hits(logits, axis=0) / batch,
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
        "accuracy_i2t": _hits(logits, axis=1) / batch,
        "accuracy_t2i": _hits(logits, axis=0) / batch,
        "scale": scale,
        "bias": jnp.asarray(bias, jnp.float32),
    }
    return -jnp.sum(jax.nn.log_sigmoid(labels * logits)) / batch, metrics


def _batch_mesh_axes(mesh, batch_axes: Sequence[str]):
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


def _check_divisible(batch: int, n: int, axes: tuple[str, ...]) -> None:
    if batch % n:
        raise ValueError(f"global batch {batch} is not divisible by the {n} devices of {axes}")


def softmax_loss_gathered(
    zimg: jax.Array,
    ztxt: jax.Array,
    log_temp: jax.Array,
    *,
    mesh=None,
    batch_axes: Sequence[str] = DEFAULT_BATCH_AXES,
) -> tuple[jax.Array, Metrics]:
    """`softmax_loss_dense` with the batch sharded over `batch_axes`: all-gather + local rows.

    Each device holds `[B, D]` gathered embeddings and `[b, B]` logits per direction.
    Falls back to the dense loss without a mesh or when the batch axes have one device.
    """
    mesh, axes, n = _batch_mesh_axes(mesh, batch_axes)
    if n == 1:
        return softmax_loss_dense(zimg, ztxt, log_temp)
    batch = zimg.shape[0]
    _check_divisible(batch, n, axes)

    def local(zi, zt, lt):  # zi, zt: [b, D] local shards
        b = zi.shape[0]
        all_i = lax.all_gather(zi, axes, tiled=True)  # [B, D]
        all_t = lax.all_gather(zt, axes, tiled=True)
        scale = jnp.exp(jnp.minimum(lt, SOFTMAX_MAX_LOG_TEMP))
        offset = lax.axis_index(axes) * b  # global index of the first local row
        pos_cols = (offset + jnp.arange(b))[:, None]
        total, hits = 0.0, []
        for mine, others in ((zi, all_t), (zt, all_i)):  # image->text, then text->image
            logits = scale * (mine @ others.T)  # [b, B]
            pos = jnp.take_along_axis(logits, pos_cols, axis=1)[:, 0]
            total += jnp.sum(jax.nn.logsumexp(logits, axis=1) - pos)
            hits.append(_hits(logits, axis=1, offset=offset))
        loss = lax.psum(total, axes) / (2 * batch)
        metrics = {
            "accuracy_i2t": lax.psum(hits[0], axes) / batch,
            "accuracy_t2i": lax.psum(hits[1], axes) / batch,
            "scale": scale,
        }
        return loss, metrics

    emb = P(axes, None)
    fn = jax.shard_map(
        local, mesh=mesh, in_specs=(emb, emb, P()), out_specs=P(), axis_names=set(axes)
    )
    log_temp = jnp.asarray(log_temp, jnp.float32)
    return fn(zimg.astype(jnp.float32), ztxt.astype(jnp.float32), log_temp)


def _ring_perm(n: int) -> list[tuple[int, int]]:
    # Device k sends to k-1, so at ring step s device k holds the chunk owned by (k + s) % n.
    return [(i, (i - 1) % n) for i in range(n)]


def _ring_logits(zi, zt_c, lt, bias, own):
    """`[b, b]` similarities, logits and labels for one (image shard, text chunk) pair."""
    sims = zi @ zt_c.T
    logits = jnp.exp(lt) * sims + bias
    eye = jnp.eye(zi.shape[0], dtype=bool)
    labels = jnp.where(own & eye, 1.0, -1.0)  # positives only on the device's own chunk
    return sims, logits, labels


def _better(val, idx, new_val, new_idx):
    """Running first-argmax: take the new candidate if larger, or equal with a lower index."""
    take = (new_val > val) | ((new_val == val) & (new_idx < idx))
    return jnp.where(take, new_val, val), jnp.where(take, new_idx, idx)


def _ring_forward(zi, zt, lt, bias, axes, n):
    """Local loss sum and hit counts of the ring pass. zi, zt: `[b, D]` local shards."""
    b = zi.shape[0]
    k = lax.axis_index(axes)
    rows = jnp.arange(b)

    def visit(s, zt_c, t_val, t_idx, loss, i_val, i_idx):
        owner = (k + s) % n
        _, logits, labels = _ring_logits(zi, zt_c, lt, bias, s == 0)
        loss = loss - jnp.sum(jax.nn.log_sigmoid(labels * logits))
        # image->text best so far stays here; text->image best travels with the text chunk.
        i_val, i_idx = _better(i_val, i_idx, logits.max(1), owner * b + logits.argmax(1))
        t_val, t_idx = _better(t_val, t_idx, logits.max(0), k * b + logits.argmax(0))
        return zt_c, t_val, t_idx, loss, i_val, i_idx

    def step(s, carry):
        zt_c, t_val, t_idx, *rest = carry
        zt_c, t_val, t_idx = lax.ppermute((zt_c, t_val, t_idx), axes, _ring_perm(n))
        return visit(s, zt_c, t_val, t_idx, *rest)

    worst = (jnp.full((b,), -jnp.inf), jnp.full((b,), n * b, jnp.int32))
    carry = visit(0, zt, *worst, jnp.float32(0.0), *worst)
    _, _, t_idx, loss, _, i_idx = lax.fori_loop(1, n, step, carry)
    # After n-1 moves the chunk here is owned by (k + n - 1) % n.
    t_owner = (k + n - 1) % n
    hits_i2t = jnp.sum(i_idx == k * b + rows).astype(jnp.float32)
    hits_t2i = jnp.sum(t_idx == t_owner * b + rows).astype(jnp.float32)
    return loss, hits_i2t, hits_t2i


_ring_local = jax.custom_vjp(_ring_forward, nondiff_argnums=(4, 5))


def _ring_local_fwd(zi, zt, lt, bias, axes, n):
    return _ring_forward(zi, zt, lt, bias, axes, n), (zi, zt, lt, bias)


def _ring_local_bwd(axes, n, res, cts):
    """Second ring pass: recompute each `[b, b]` block; the text gradient travels with its chunk."""
    zi, zt, lt, bias = res
    g = cts[0]  # cotangent of the local loss sum; the hit counts carry no gradient
    scale = jnp.exp(lt)

    def visit(s, zt_c, dzt_c, dzi, dlt, dbias):
        sims, logits, labels = _ring_logits(zi, zt_c, lt, bias, s == 0)
        dlogits = -g * labels * jax.nn.sigmoid(-labels * logits)  # d(-log_sigmoid(y x))/dx
        dzi = dzi + scale * (dlogits @ zt_c)
        dzt_c = dzt_c + scale * (dlogits.T @ zi)
        return zt_c, dzt_c, dzi, dlt + scale * jnp.sum(dlogits * sims), dbias + jnp.sum(dlogits)

    def step(s, carry):
        zt_c, dzt_c, *rest = carry
        zt_c, dzt_c = lax.ppermute((zt_c, dzt_c), axes, _ring_perm(n))
        return visit(s, zt_c, dzt_c, *rest)

    zero = jnp.zeros_like(lt)
    carry = visit(0, zt, jnp.zeros_like(zt), jnp.zeros_like(zi), zero, zero)
    _, dzt_c, dzi, dlt, dbias = lax.fori_loop(1, n, step, carry)
    dzt = lax.ppermute(dzt_c, axes, _ring_perm(n))  # one more move brings it to its owner
    return dzi, dzt, dlt, dbias


_ring_local.defvjp(_ring_local_fwd, _ring_local_bwd)


def sigmoid_loss_ring(
    zimg: jax.Array,
    ztxt: jax.Array,
    log_temp: jax.Array,
    bias: jax.Array,
    *,
    mesh=None,
    batch_axes: Sequence[str] = DEFAULT_BATCH_AXES,
) -> tuple[jax.Array, Metrics]:
    """`sigmoid_loss_dense` with the batch sharded over `batch_axes`: text chunks on a ring.

    Per device: `[b, D]` images, one visiting `[b, D]` text chunk, `[b, b]` logits; n ring steps
    forward and n backward. Falls back to the dense loss without a mesh or with one batch device.
    """
    mesh, axes, n = _batch_mesh_axes(mesh, batch_axes)
    if n == 1:
        return sigmoid_loss_dense(zimg, ztxt, log_temp, bias)
    batch = zimg.shape[0]
    _check_divisible(batch, n, axes)

    def local(zi, zt, lt, bi):
        # Scalars enter the per-device VJP as varying; the pcast transpose psums their grads.
        lt, bi = (lax.pcast(x, axes, to="varying") for x in (lt, bi))
        loss, hits_i2t, hits_t2i = _ring_local(zi, zt, lt, bi, axes, n)
        metrics = {
            "accuracy_i2t": lax.psum(hits_i2t, axes) / batch,
            "accuracy_t2i": lax.psum(hits_t2i, axes) / batch,
        }
        return lax.psum(loss, axes) / batch, metrics

    emb = P(axes, None)
    fn = jax.shard_map(
        local, mesh=mesh, in_specs=(emb, emb, P(), P()), out_specs=P(), axis_names=set(axes)
    )
    log_temp, bias = jnp.asarray(log_temp, jnp.float32), jnp.asarray(bias, jnp.float32)
    loss, metrics = fn(zimg.astype(jnp.float32), ztxt.astype(jnp.float32), log_temp, bias)
    return loss, {**metrics, "scale": jnp.exp(log_temp), "bias": bias}


def contrastive_loss(
    kind: str,
    zimg: jax.Array,
    ztxt: jax.Array,
    log_temp: jax.Array,
    bias: jax.Array | None = None,
    *,
    impl: str = "sharded",
    mesh=None,
    batch_axes: Sequence[str] = DEFAULT_BATCH_AXES,
) -> tuple[jax.Array, Metrics]:
    """Dispatch by name: kind in {"softmax", "sigmoid"}, impl in IMPLS.

    impl: "dense" (the reference), "sharded" (each loss's default fast path: all-gather softmax,
    ring sigmoid), "ring" (both on the ring: per-device memory O(b^2), b the local batch) or
    "gathered" (softmax only). `bias` is required for "sigmoid" and rejected for "softmax" (a
    misconfigured objective should fail loudly rather than silently ignore a parameter). Shapes
    as in the functions above.
    """
    if kind not in ("softmax", "sigmoid"):
        raise ValueError(f"unknown contrastive loss kind {kind!r}; expected 'softmax' or 'sigmoid'")
    if impl not in IMPLS:
        raise ValueError(f"unknown contrastive loss impl {impl!r}; expected one of {IMPLS}")
    sharded = dict(mesh=mesh, batch_axes=batch_axes)
    if kind == "softmax":
        if bias is not None:
            raise ValueError("the softmax contrastive loss takes no bias; pass bias=None")
        if impl == "dense":
            return softmax_loss_dense(zimg, ztxt, log_temp)
        if impl == "ring":
            from objectives import softmax_ring  # imports this module: a top-level import cycles

            return softmax_ring.softmax_loss_ring(zimg, ztxt, log_temp, **sharded)
        return softmax_loss_gathered(zimg, ztxt, log_temp, **sharded)
    if bias is None:
        raise ValueError("the sigmoid contrastive loss needs a bias (SigLIP init: -10)")
    if impl == "gathered":
        raise ValueError("impl 'gathered' is softmax-only; the sigmoid loss uses 'ring'/'sharded'")
    if impl == "dense":
        return sigmoid_loss_dense(zimg, ztxt, log_temp, bias)
    return sigmoid_loss_ring(zimg, ztxt, log_temp, bias, **sharded)
