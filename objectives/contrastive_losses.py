"""Contrastive image-text losses by name, and their sharded fast paths.

`contrastive_loss(kind, ...)` dispatches to the dense references (contrastive_reference.py) or a
fast path that is exact under data/fsdp sharding (negatives are global) while the per-device
logits grow with the local batch `b = B / n`, not with `B * B`:

- `softmax_loss_gathered`: all-gather both embeddings, each device scores its own `b` rows
  against all `B` columns in both directions (`[b, B]` logits), psum.
- `softmax_ring.softmax_loss_ring` (impl "ring"): the same ring for the softmax loss, with
  online log-sum-exps, so its memory too grows with `b` only.
- `sigmoid_loss_ring`: keep the local images, pass text chunks `[b, D]` around the ring of
  batch devices with `ppermute` (`[b, b]` logits per step). A custom VJP runs a second ring pass
  in the backward, so autodiff never stacks the visited chunks: no device ever holds `[B, D]`
  text or `[B, b]` logits, forward or backward.

The ring plumbing (batch mesh axes, permutation) is in batch_ring.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from objectives import batch_ring, softmax_ring
from objectives import contrastive_reference as ref

IMPLS = ("dense", "sharded", "ring", "gathered")


def softmax_loss_gathered(
    zimg: jax.Array,
    ztxt: jax.Array,
    log_temp: jax.Array,
    *,
    mesh=None,
    batch_axes: Sequence[str] = batch_ring.DEFAULT_BATCH_AXES,
) -> tuple[jax.Array, ref.Metrics]:
    """`softmax_loss_dense` with the batch sharded over `batch_axes`: all-gather + local rows.

    Each device holds `[B, D]` gathered embeddings and `[b, B]` logits per direction.
    Falls back to the dense loss without a mesh or when the batch axes have one device.
    """
    mesh, axes, n = batch_ring.batch_mesh_axes(mesh, batch_axes)
    if n == 1:
        return ref.softmax_loss_dense(zimg, ztxt, log_temp)
    batch = zimg.shape[0]
    batch_ring.check_divisible(batch, n, axes)

    def local(zi, zt, lt):  # zi, zt: [b, D] local shards
        b = zi.shape[0]
        all_i = lax.all_gather(zi, axes, tiled=True)  # [B, D]
        all_t = lax.all_gather(zt, axes, tiled=True)
        scale = ref.logit_scale("softmax", lt)
        offset = lax.axis_index(axes) * b  # global index of the first local row
        pos_cols = (offset + jnp.arange(b))[:, None]
        total, hits = 0.0, []
        for mine, others in ((zi, all_t), (zt, all_i)):  # image->text, then text->image
            logits = scale * (mine @ others.T)  # [b, B]
            pos = jnp.take_along_axis(logits, pos_cols, axis=1)[:, 0]
            total += jnp.sum(jax.nn.logsumexp(logits, axis=1) - pos)
            hits.append(ref.hits(logits, axis=1, offset=offset))
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


def _ring_logits(zi, zt_c, lt, bias, own):
    """`[b, b]` similarities, logits and labels for one (image shard, text chunk) pair."""
    sims = zi @ zt_c.T
    logits = jnp.exp(lt) * sims + bias
    eye = jnp.eye(zi.shape[0], dtype=bool)
    labels = jnp.where(own & eye, 1.0, -1.0)  # positives only on the device's own chunk
    return sims, logits, labels


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
        i_val, i_idx = batch_ring.running_argmax(
            i_val, i_idx, logits.max(1), owner * b + logits.argmax(1)
        )
        t_val, t_idx = batch_ring.running_argmax(
            t_val, t_idx, logits.max(0), k * b + logits.argmax(0)
        )
        return zt_c, t_val, t_idx, loss, i_val, i_idx

    def step(s, carry):
        zt_c, t_val, t_idx, *rest = carry
        zt_c, t_val, t_idx = lax.ppermute((zt_c, t_val, t_idx), axes, batch_ring.ring_perm(n))
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
        zt_c, dzt_c = lax.ppermute((zt_c, dzt_c), axes, batch_ring.ring_perm(n))
        return visit(s, zt_c, dzt_c, *rest)

    zero = jnp.zeros_like(lt)
    carry = visit(0, zt, jnp.zeros_like(zt), jnp.zeros_like(zi), zero, zero)
    _, dzt_c, dzi, dlt, dbias = lax.fori_loop(1, n, step, carry)
    dzt = lax.ppermute(dzt_c, axes, batch_ring.ring_perm(n))  # one more move brings it to its owner
    return dzi, dzt, dlt, dbias


_ring_local.defvjp(_ring_local_fwd, _ring_local_bwd)


def sigmoid_loss_ring(
    zimg: jax.Array,
    ztxt: jax.Array,
    log_temp: jax.Array,
    bias: jax.Array,
    *,
    mesh=None,
    batch_axes: Sequence[str] = batch_ring.DEFAULT_BATCH_AXES,
) -> tuple[jax.Array, ref.Metrics]:
    """`sigmoid_loss_dense` with the batch sharded over `batch_axes`: text chunks on a ring.

    Per device: `[b, D]` images, one visiting `[b, D]` text chunk, `[b, b]` logits; n ring steps
    forward and n backward. Falls back to the dense loss without a mesh or with one batch device.
    """
    mesh, axes, n = batch_ring.batch_mesh_axes(mesh, batch_axes)
    if n == 1:
        return ref.sigmoid_loss_dense(zimg, ztxt, log_temp, bias)
    batch = zimg.shape[0]
    batch_ring.check_divisible(batch, n, axes)

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
    batch_axes: Sequence[str] = batch_ring.DEFAULT_BATCH_AXES,
) -> tuple[jax.Array, ref.Metrics]:
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
            return ref.softmax_loss_dense(zimg, ztxt, log_temp)
        if impl == "ring":
            return softmax_ring.softmax_loss_ring(zimg, ztxt, log_temp, **sharded)
        return softmax_loss_gathered(zimg, ztxt, log_temp, **sharded)
    if bias is None:
        raise ValueError("the sigmoid contrastive loss needs a bias (SigLIP init: -10)")
    if impl == "gathered":
        raise ValueError("impl 'gathered' is softmax-only; the sigmoid loss uses 'ring'/'sharded'")
    if impl == "dense":
        return ref.sigmoid_loss_dense(zimg, ztxt, log_temp, bias)
    return sigmoid_loss_ring(zimg, ztxt, log_temp, bias, **sharded)
