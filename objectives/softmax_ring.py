"""CLIP's softmax loss on a ring: per-device memory grows with the local batch only.

`softmax_loss_gathered` all-gathers both embeddings, so each device holds `[B, D]` embeddings
and `[b, B]` logits: memory grows with the global batch. Here, as in `sigmoid_loss_ring`, the
images stay put and text chunks `[b, D]` travel around the ring of batch devices; each device
sees one `[b, b]` logit block per ring step.

Both directions' log-sum-exps are accumulated online (running max + rescaled sum): the
image->text one for the local image rows, the text->image one travels with its text chunk and
is complete once the chunk has visited every device. A custom VJP runs a second ring pass that
recomputes each block and turns it into gradients with the final log-sum-exps,
d loss / d logit_ij = softmax_row_i(j) + softmax_col_j(i) - 2 [i == j] (times the cotangent),
the text gradient travelling with its chunk, so autodiff never stacks the visited chunks.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from objectives import batch_ring
from objectives import contrastive_reference as ref


def _block(zi, zt_c, lt):
    """`[b, b]` similarities and logits of the local images against one text chunk."""
    sims = zi @ zt_c.T
    return sims, ref.logit_scale("softmax", lt) * sims


def _lse_update(m, s, block_max, block_sum_fn):
    """Online log-sum-exp: (running max, sum of exp(x - max)) after one more block."""
    new_m = jnp.maximum(m, block_max)
    return new_m, s * jnp.exp(m - new_m) + block_sum_fn(new_m)


def _ring_forward(zi, zt, lt, axes, n):
    """(local loss sum, hits i2t, hits t2i), plus each own row's / text's final LSEs."""
    b = zi.shape[0]
    k = lax.axis_index(axes)
    rows = jnp.arange(b)

    def visit(s, zt_c, tm, ts, t_val, t_idx, im, is_, i_val, i_idx):
        owner = (k + s) % n
        _, logits = _block(zi, zt_c, lt)
        im, is_ = _lse_update(im, is_, logits.max(1), lambda m: jnp.exp(logits - m[:, None]).sum(1))
        tm, ts = _lse_update(tm, ts, logits.max(0), lambda m: jnp.exp(logits - m[None]).sum(0))
        i_val, i_idx = batch_ring.running_argmax(
            i_val, i_idx, logits.max(1), owner * b + logits.argmax(1)
        )
        t_val, t_idx = batch_ring.running_argmax(
            t_val, t_idx, logits.max(0), k * b + logits.argmax(0)
        )
        return zt_c, tm, ts, t_val, t_idx, im, is_, i_val, i_idx

    def step(s, carry):
        travelling, rest = carry[:5], carry[5:]
        travelling = lax.ppermute(travelling, axes, batch_ring.ring_perm(n))
        return visit(s, *travelling, *rest)

    neg = jnp.full((b,), -jnp.inf)
    zero = jnp.zeros((b,))
    worst_idx = jnp.full((b,), n * b, jnp.int32)
    carry = visit(0, zt, neg, zero, neg, worst_idx, neg, zero, neg, worst_idx)
    _, tm, ts, _, t_idx, im, is_, _, i_idx = lax.fori_loop(1, n, step, carry)
    lse_i2t = im + jnp.log(is_)  # [b], the local image rows
    lse_t2i = tm + jnp.log(ts)  # [b], the chunk now here, owned by (k + n - 1) % n
    _, own_logits = _block(zi, zt, lt)
    pos = jnp.diagonal(own_logits)
    loss = jnp.sum(lse_i2t) + jnp.sum(lse_t2i) - 2 * jnp.sum(pos)
    t_owner = (k + n - 1) % n
    hits_i2t = jnp.sum(i_idx == k * b + rows).astype(jnp.float32)
    hits_t2i = jnp.sum(t_idx == t_owner * b + rows).astype(jnp.float32)
    # One more move brings each text chunk's LSE home, where the backward pass starts it.
    lse_t2i_own = lax.ppermute(lse_t2i, axes, batch_ring.ring_perm(n))
    return (loss, hits_i2t, hits_t2i), (lse_i2t, lse_t2i_own)


def _ring_value(zi, zt, lt, axes, n):
    return _ring_forward(zi, zt, lt, axes, n)[0]


_ring_local = jax.custom_vjp(_ring_value, nondiff_argnums=(3, 4))


def _ring_local_fwd(zi, zt, lt, axes, n):
    out, (lse_i2t, lse_t2i) = _ring_forward(zi, zt, lt, axes, n)
    return out, (zi, zt, lt, lse_i2t, lse_t2i)


def _ring_local_bwd(axes, n, res, cts):
    zi, zt, lt, lse_i2t, lse_t2i = res
    g = cts[0]  # cotangent of the local loss sum (the same on every device); hits: none
    scale = ref.logit_scale("softmax", lt)
    dscale = jnp.where(lt < ref.SOFTMAX_MAX_LOG_TEMP, scale, 0.0)  # d scale / d log_temp
    eye = jnp.eye(zi.shape[0])

    def visit(s, zt_c, lse_c, dzt_c, dzi, dlt):
        sims, logits = _block(zi, zt_c, lt)
        p_row = jnp.exp(logits - lse_i2t[:, None])
        p_col = jnp.exp(logits - lse_c[None, :])
        dlogits = g * (p_row + p_col - 2 * jnp.where(s == 0, eye, 0.0))
        dzi = dzi + scale * (dlogits @ zt_c)
        dzt_c = dzt_c + scale * (dlogits.T @ zi)
        return zt_c, lse_c, dzt_c, dzi, dlt + dscale * jnp.sum(dlogits * sims)

    def step(s, carry):
        travelling, rest = carry[:3], carry[3:]
        travelling = lax.ppermute(travelling, axes, batch_ring.ring_perm(n))
        return visit(s, *travelling, *rest)

    carry = visit(0, zt, lse_t2i, jnp.zeros_like(zt), jnp.zeros_like(zi), jnp.zeros_like(lt))
    _, _, dzt_c, dzi, dlt = lax.fori_loop(1, n, step, carry)
    dzt = lax.ppermute(dzt_c, axes, batch_ring.ring_perm(n))  # one more move brings it to its owner
    return dzi, dzt, dlt


_ring_local.defvjp(_ring_local_fwd, _ring_local_bwd)


def softmax_loss_ring(
    zimg: jax.Array,
    ztxt: jax.Array,
    log_temp: jax.Array,
    *,
    mesh=None,
    batch_axes: Sequence[str] = batch_ring.DEFAULT_BATCH_AXES,
) -> tuple[jax.Array, ref.Metrics]:
    """`softmax_loss_dense` with the batch sharded over `batch_axes`: text chunks on a ring.

    Per device: `[b, D]` images, one visiting `[b, D]` text chunk, `[b, b]` logits; n ring
    steps forward and n backward. Falls back to the dense loss without a mesh or with one batch
    device. Same loss, metrics and gradients as the dense reference.
    """
    mesh, axes, n = batch_ring.batch_mesh_axes(mesh, batch_axes)
    if n == 1:
        return ref.softmax_loss_dense(zimg, ztxt, log_temp)
    batch = zimg.shape[0]
    batch_ring.check_divisible(batch, n, axes)

    def local(zi, zt, lt):
        lt = lax.pcast(lt, axes, to="varying")  # its per-device grads are psummed by pcast^T
        loss, hits_i2t, hits_t2i = _ring_local(zi, zt, lt, axes, n)
        metrics = {
            "accuracy_i2t": lax.psum(hits_i2t, axes) / batch,
            "accuracy_t2i": lax.psum(hits_t2i, axes) / batch,
        }
        return lax.psum(loss, axes) / (2 * batch), metrics

    emb = P(axes, None)
    fn = jax.shard_map(
        local, mesh=mesh, in_specs=(emb, emb, P()), out_specs=P(), axis_names=set(axes)
    )
    log_temp = jnp.asarray(log_temp, jnp.float32)
    loss, metrics = fn(zimg.astype(jnp.float32), ztxt.astype(jnp.float32), log_temp)
    return loss, {**metrics, "scale": ref.logit_scale("softmax", log_temp)}
