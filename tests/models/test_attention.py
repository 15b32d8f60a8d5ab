"""Attention kernels against a plain reference: a query row whose keys are all masked
contributes nothing (output 0, finite gradients) on every path, and partially masked rows
are the softmax over their valid keys."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import attention

B, T, S, H, HD = 2, 4, 6, 4, 8


def _normal(seed, *shape):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _mask() -> np.ndarray:
    """[B, 1, T, S]: example 0 has one fully masked query row (2), example 1 masks every key."""
    valid = np.ones((B, 1, T, S), bool)
    valid[0, :, :, 4:] = False  # key padding: partially masked rows
    valid[0, :, 2, :] = False  # a fully masked row among them
    valid[1] = False  # a text-only example with an empty prefix: nothing to attend
    return valid


def reference(q, k, v, mask):
    """Softmax over each row's valid keys, 0 for a row without any. q [B, T, H, hd]; k, v
    [B, S, Hkv, hd] (Hkv divides H); mask broadcastable to [B, H, T, S]."""
    groups = q.shape[2] // k.shape[2]
    k, v = (jnp.repeat(a, groups, axis=2) for a in (k, v))
    logits = jnp.einsum("bthd,bshd->bhts", q, k) / np.sqrt(q.shape[-1])
    mask = jnp.broadcast_to(mask, logits.shape)
    top = jax.lax.stop_gradient(jnp.max(jnp.where(mask, logits, -jnp.inf), -1, keepdims=True))
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    # Masked logits are replaced before exp, so no inf reaches the gradient.
    weights = jnp.where(mask, jnp.exp(jnp.where(mask, logits, top) - top), 0.0)
    total = jnp.sum(weights, -1, keepdims=True)
    weights = weights / jnp.where(total > 0, total, 1.0)
    return jnp.einsum("bhts,bshd->bthd", weights, v)


def _heads_major(fn):
    """Runs `fn` on [B, Hkv, S, hd] keys/values (the KV cache's layout)."""
    return lambda q, k, v, mask: fn(q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), mask)


PATHS = {
    "einsum": lambda q, k, v, m: attention.attention(q, k, v, m, implementation="einsum"),
    "xla": lambda q, k, v, m: attention.attention(q, k, v, m, implementation="xla"),
    "grouped_einsum": lambda q, k, v, m: attention.grouped_attention(
        q, k, v, m, implementation="einsum"
    ),
    "grouped_xla": lambda q, k, v, m: attention.grouped_attention(q, k, v, m, implementation="xla"),
    "heads_major_einsum": _heads_major(
        lambda q, k, v, m: attention.grouped_attention(
            q, k, v, m, implementation="einsum", kv_heads_major=True
        )
    ),
    "heads_major_xla": _heads_major(
        lambda q, k, v, m: attention.grouped_attention(
            q, k, v, m, implementation="xla", kv_heads_major=True
        )
    ),
}
# The grouped paths get 2 key/value heads for 4 query heads; the plain ones 4.
KV_HEADS = {name: 2 if "grouped" in name or "heads_major" in name else H for name in PATHS}


def _inputs(kv_heads):
    return _normal(0, B, T, H, HD), _normal(1, B, S, kv_heads, HD), _normal(2, B, S, kv_heads, HD)


def _value_and_grads(fn, q, k, v, mask):
    def loss(q, k, v):
        return jnp.sum(jnp.sin(fn(q, k, v, mask)))

    return jax.jit(lambda *a: (fn(*a, mask), jax.grad(loss, argnums=(0, 1, 2))(*a)))(q, k, v)


@pytest.mark.parametrize("path", list(PATHS))
def test_fully_masked_rows_give_zero_and_the_rest_match_the_reference(path):
    q, k, v = _inputs(KV_HEADS[path])
    mask = jnp.asarray(_mask())
    out, grads = _value_and_grads(PATHS[path], q, k, v, mask)
    want, want_grads = _value_and_grads(reference, q, k, v, mask)
    out = np.asarray(out)
    assert np.all(out[0, 2] == 0.0) and np.all(out[1] == 0.0)
    np.testing.assert_allclose(out, want, atol=1e-5)
    for g, w in zip(grads, want_grads, strict=True):
        assert np.all(np.isfinite(g))
        np.testing.assert_allclose(g, w, atol=1e-5)
    # A fully masked row's query has no effect, and masked keys/values receive no gradient.
    dq, dk, dv = (np.asarray(g) for g in grads)
    assert np.all(dq[0, 2] == 0.0) and np.all(dq[1] == 0.0)
    assert np.all(dk[0, 4:] == 0.0) and np.all(dv[1] == 0.0)


@pytest.mark.parametrize("path", ["einsum", "xla"])
def test_causal_and_padding_together_can_empty_a_row(path):
    """Left padding under a causal mask leaves the first query without keys."""
    q, k, v = _inputs(H)
    k, v = k[:, :T], v[:, :T]  # self-attention shapes: T keys for T queries
    padding = np.ones((B, 1, 1, T), bool)
    padding[0, ..., 0] = False
    fn = {
        "einsum": lambda q, k, v, m: attention.attention(q, k, v, m, True, "einsum"),
        "xla": lambda q, k, v, m: attention.attention(q, k, v, m, True, "xla"),
    }[path]
    combined = padding & np.tril(np.ones((T, T), bool))
    out, grads = _value_and_grads(fn, q, k, v, jnp.asarray(padding))
    want, want_grads = _value_and_grads(reference, q, k, v, jnp.asarray(combined))
    assert np.all(np.asarray(out)[0, 0] == 0.0)
    np.testing.assert_allclose(out, want, atol=1e-5)
    for g, w in zip(grads, want_grads, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-5)


def test_unmasked_attention_is_unchanged():
    """No mask: every path is the plain softmax (the zeroing only touches empty rows)."""
    q, k, v = _inputs(H)
    full = jnp.ones((1, 1, 1, S), bool)
    want = reference(q, k, v, full)
    for impl in ("einsum", "xla"):
        got = jax.jit(lambda q, k, v, i=impl: attention.attention(q, k, v, implementation=i))
        np.testing.assert_allclose(got(q, k, v), want, atol=1e-5)
